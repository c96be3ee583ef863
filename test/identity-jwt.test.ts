import assert from 'node:assert/strict';
import { createHmac, createPrivateKey, generateKeyPairSync, type KeyObject, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { base64url, createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, SignJWT } from 'jose';
import { sql } from 'kysely';
import pino from 'pino';
import { Agent, request as undiciRequest } from 'undici';
import { dropDatabases } from '../src/adapters/db/pg.ts';
import { createApp } from '../src/app.ts';
import { loadConfig } from '../src/core/config.ts';
import type { Environment } from '../src/core/principal.ts';
import { SecretBox } from '../src/core/secret-box.ts';
import { makeTempDir, startServer, type TestResponse, type TestServer } from './helpers/server.ts';
import { inProcessOnly } from './helpers/shape.ts';

/**
 * Attacks on user access tokens. Each forged token is made with jose or node:crypto; the
 * server's own private key is read from the database and unsealed with the installation's
 * secret key, so that a token differing from a valid one in a single respect can be made.
 * A control token made the same way must be accepted, or the refusals would prove nothing.
 */
const PASSWORD = 'correct horse battery staple';

interface Forge {
  alg?: string;
  kid?: string;
  typ?: string;
  claims?: Record<string, unknown>;
  omit?: string[];
  key?: KeyObject;
}

describe('user access tokens (JWT) under attack', () => {
  let server: TestServer;
  let session: { access_token: string; refresh_token: string; user: { id: string } };
  let signingKeys: Record<Environment, { kid: string; privateKey: KeyObject }>;
  let issuer: string;

  before(async () => {
    server = await startServer();
    const registered = await server.request('POST', '/v1/auth/register', {
      basic: server.keys.test.application_key,
      json: { email: 'mallory@example.com', password: PASSWORD, name: 'Mallory' },
    });
    assert.equal(registered.status, 201);
    session = registered.json;
    issuer = String(decodeJwt(session.access_token).iss);
    const secret = server.secretKey;
    const box = new SecretBox(secret);
    const keys = {} as typeof signingKeys;
    for (const environment of ['live', 'test'] as const) {
      const { rows } = await sql<{ kid: string; private_enc: Buffer }>`select kid, private_enc from identity.signing_key where retired_at is null`.execute(
        server.app.databases.environments[environment],
      );
      const row = rows[0];
      assert.ok(row);
      keys[environment] = {
        kid: row.kid,
        privateKey: createPrivateKey({ key: box.open(row.private_enc, `signing-key:${environment}:${row.kid}`), format: 'der', type: 'pkcs8' }),
      };
    }
    signingKeys = keys;
  });
  after(async () => server?.close());

  const me = (token: string) => server.request('GET', '/v1/users/me', { auth: token });

  /** A token like the server's, signed with the test environment's real key, with the given changes. */
  async function forge(options: Forge = {}): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    const payload: Record<string, unknown> = {
      iss: issuer,
      aud: 'bantu',
      sub: session.user.id,
      tid: decodeJwt(session.access_token).tid,
      env: 'test',
      role: 'user',
      sid: decodeJwt(session.access_token).sid,
      iat: now,
      exp: now + 600,
      ...options.claims,
    };
    for (const claim of options.omit ?? []) delete payload[claim];
    return new SignJWT(payload)
      .setProtectedHeader({ alg: options.alg ?? 'EdDSA', kid: options.kid ?? signingKeys.test.kid, typ: options.typ ?? 'at+jwt' })
      .sign(options.key ?? signingKeys.test.privateKey);
  }

  it('accepts the real token and a faithful forgery (the control)', async () => {
    assert.equal((await me(session.access_token)).status, 200);
    assert.equal((await me(await forge())).status, 200);
    const header = decodeProtectedHeader(session.access_token);
    assert.equal(header.alg, 'EdDSA');
    assert.equal(header.kid, signingKeys.test.kid);
    const claims = decodeJwt(session.access_token);
    assert.equal((claims.exp as number) - (claims.iat as number), 900);
    for (const claim of ['iss', 'aud', 'sub', 'tid', 'env', 'role']) assert.ok(claims[claim], claim);
  });

  const refused = async (token: string, why: string) => {
    const response = await me(token);
    assert.equal(response.status, 401, `${why}: ${response.text}`);
    assert.equal(response.json.code, 'unauthorized', why);
    assert.ok(response.headers['www-authenticate'], why);
  };

  it('issues tokens that a third party verifies with jose against the published JWKS', async () => {
    const login = await server.request('POST', '/v1/auth/login', { basic: server.keys.test.application_key, json: { email: 'mallory@example.com', password: PASSWORD } });
    assert.equal(login.status, 200, login.text);
    const jwks = createLocalJWKSet((await server.request('GET', '/.well-known/jwks.json')).json);
    for (const token of [session.access_token, login.json.access_token as string]) {
      const { payload, protectedHeader } = await jwtVerify(token, jwks, { algorithms: ['EdDSA'], issuer, audience: 'bantu', typ: 'at+jwt', requiredClaims: ['exp', 'iat', 'sub', 'jti'] });
      assert.deepEqual(protectedHeader, { alg: 'EdDSA', kid: signingKeys.test.kid, typ: 'at+jwt' });
      assert.equal(payload.sub, session.user.id);
      assert.equal(payload.env, 'test');
      assert.equal(payload.role, 'user');
      assert.equal((payload.exp as number) - (payload.iat as number), 900);
    }
    assert.notEqual(decodeJwt(login.json.access_token).sid, decodeJwt(session.access_token).sid, 'a login opens a session of its own');
  });

  it('refuses alg none', async () => {
    const valid = await forge();
    const [, payload] = valid.split('.');
    const header = base64url.encode(JSON.stringify({ alg: 'none', kid: signingKeys.test.kid, typ: 'at+jwt' }));
    await refused(`${header}.${payload}.`, 'alg none, empty signature');
    await refused(`${header}.${payload}`, 'alg none, no signature part');
  });

  it('refuses HMAC signed with the public key', async () => {
    const jwks = (await server.request('GET', '/.well-known/jwks.json')).json.keys as Array<Record<string, string>>;
    const publicJwk = jwks.find((k) => k.kid === signingKeys.test.kid);
    assert.ok(publicJwk);
    const publicPem = (await import('node:crypto')).createPublicKey({ key: publicJwk as never, format: 'jwk' }).export({ format: 'pem', type: 'spki' });
    const valid = await forge();
    const [, payload] = valid.split('.');
    for (const [secret, label] of [
      [String(publicPem), 'PEM'],
      [JSON.stringify(publicJwk), 'JWK JSON'],
      [base64url.decode(publicJwk.x as string), 'raw x'],
    ] as const) {
      for (const alg of ['HS256', 'HS512']) {
        const header = base64url.encode(JSON.stringify({ alg, kid: signingKeys.test.kid, typ: 'at+jwt' }));
        const signature = createHmac(alg === 'HS256' ? 'sha256' : 'sha512', secret).update(`${header}.${payload}`).digest('base64url');
        await refused(`${header}.${payload}.${signature}`, `${alg} with ${label}`);
      }
    }
  });

  it('refuses an unknown kid, and a key of our own under a known kid', async () => {
    const { privateKey } = generateKeyPairSync('ed25519');
    await refused(await forge({ kid: 'no-such-kid', key: privateKey }), 'unknown kid');
    await refused(await forge({ kid: 'no-such-kid' }), 'unknown kid, right key');
    await refused(await forge({ key: privateKey }), 'known kid, wrong key');
  });

  it('refuses a bad signature', async () => {
    const [header, payload, signature] = session.access_token.split('.') as [string, string, string];
    const flipped = signature.slice(0, 10) + (signature[10] === 'A' ? 'B' : 'A') + signature.slice(11);
    await refused(`${header}.${payload}.${flipped}`, 'flipped signature');
    const otherPayload = base64url.encode(JSON.stringify({ ...decodeJwt(session.access_token), role: 'admin' }));
    await refused(`${header}.${otherPayload}.${signature}`, 'payload changed (role: admin)');
  });

  it('refuses a missing or past exp, and other missing claims', async () => {
    await refused(await forge({ omit: ['exp'] }), 'no exp');
    const now = Math.floor(Date.now() / 1000);
    await refused(await forge({ claims: { iat: now - 3600, exp: now - 1800 } }), 'expired');
    await refused(await forge({ omit: ['sub'] }), 'no sub');
    await refused(await forge({ omit: ['tid'] }), 'no tenant');
    await refused(await forge({ claims: { role: 'root' } }), 'unknown role');
  });

  it('refuses another audience or issuer, and another token type', async () => {
    await refused(await forge({ claims: { aud: 'someone-else' } }), 'wrong aud');
    await refused(await forge({ omit: ['aud'] }), 'no aud');
    await refused(await forge({ claims: { iss: 'https://evil.example.com' } }), 'wrong iss');
    await refused(await forge({ typ: 'JWT' }), 'typ JWT instead of at+jwt');
  });

  it('refuses a refresh token used as an access token', async () => {
    await refused(session.refresh_token, 'refresh token as Bearer');
    const basic = await server.request('GET', '/v1/users/me', { basic: session.refresh_token });
    assert.equal(basic.status, 401);
  });

  it('refuses a token that names the other environment: keys are checked per environment', async () => {
    // Signed with the test key but claiming live: the kid is not in live's key set.
    await refused(await forge({ claims: { env: 'live' } }), 'test key, live claim');
    // Signed with the live key, claiming test: the live kid is not in test's set.
    await refused(await forge({ kid: signingKeys.live.kid, key: signingKeys.live.privateKey }), 'live key, test claim');
    // A genuine live token is valid, but only for live data: the test user is not there.
    const live = await forge({ kid: signingKeys.live.kid, key: signingKeys.live.privateKey, claims: { env: 'live' } });
    const response = await me(live);
    assert.equal(response.status, 401, 'the test user does not exist in live');
  });

  it('rotates signing keys: the new key signs, old tokens verify until they expire', { skip: inProcessOnly('rotates through app.identity.tokens (identity-signing-keys.test.ts rotates over HTTP)') }, async () => {
    const oldToken = (await server.request('POST', '/v1/auth/login', { basic: server.keys.test.application_key, json: { email: 'mallory@example.com', password: PASSWORD } })).json
      .access_token as string;
    const oldKid = decodeProtectedHeader(oldToken).kid;
    const newKid = await server.app.identity.tokens.rotate('test');
    assert.notEqual(newKid, oldKid);
    const fresh = (await server.request('POST', '/v1/auth/login', { basic: server.keys.test.application_key, json: { email: 'mallory@example.com', password: PASSWORD } })).json
      .access_token as string;
    assert.equal(decodeProtectedHeader(fresh).kid, newKid, 'the new key signs');
    assert.equal((await me(fresh)).status, 200);
    assert.equal((await me(oldToken)).status, 200, 'a token of the old key still verifies');
    const kids = (await server.request('GET', '/.well-known/jwks.json')).json.keys.map((k: { kid: string }) => k.kid);
    assert.ok(kids.includes(oldKid) && kids.includes(newKid), 'both keys are published');
    // Once the old key has retired for longer than a token lives, it verifies nothing.
    await sql`update identity.signing_key set retired_at = now() - interval '1 hour' where kid = ${oldKid as string}`.execute(server.app.databases.environments.test);
    await server.app.identity.tokens.rotate('test');
    await refused(oldToken, 'token of a key retired long ago');
    const kidsAfter = (await server.request('GET', '/.well-known/jwks.json')).json.keys.map((k: { kid: string }) => k.kid);
    assert.ok(!kidsAfter.includes(oldKid));
  });

  it('refuses the access token of a deleted user at once, and its refresh token', async () => {
    const victim = await server.request('POST', '/v1/auth/register', {
      basic: server.keys.test.application_key,
      json: { email: 'short-lived@example.com', password: PASSWORD, name: 'Gone Soon' },
    });
    assert.equal((await me(victim.json.access_token)).status, 200);
    const deleted = await server.request('DELETE', `/v1/users/${victim.json.user.id}`, { basic: server.keys.test.account_key });
    assert.equal(deleted.status, 204);
    await refused(victim.json.access_token, 'deleted user');
    const refresh = await server.request('POST', '/v1/auth/refresh', { basic: server.keys.test.application_key, json: { refresh_token: victim.json.refresh_token } });
    assert.equal(refresh.status, 400);
  });

  it('refuses garbage in every shape without a 500', async () => {
    for (const token of ['eyJ', 'eyJ.eyJ.', 'eyJhbGciOiJFZERTQSJ9.e30.', 'a.b.c', `${'eyJ'.repeat(3000)}.x.y`, 'eyJ0eXAiOiJhdCtqd3QifQ.!!!.###']) {
      await refused(token, `garbage ${token.slice(0, 20)}`);
    }
  });
});

describe('signing keys across restarts', { skip: inProcessOnly('starts and restarts apps of its own with createApp') }, () => {
  it('keeps the keys (sealed) in the database: a token survives a restart; another secret key is refused at start', async () => {
    const dataDir = await makeTempDir();
    const external = process.env.BANTU_TEST_DATABASE_URL;
    let databaseUrl: string | undefined;
    if (external) {
      const url = new URL(external);
      url.pathname = `/bantu_t_${randomBytes(5).toString('hex')}`;
      databaseUrl = url.toString();
    }
    const configWith = (env: Record<string, string>) => {
      const result = loadConfig({ BANTU_DATA_DIR: dataDir, BANTU_PORT: '0', BANTU_LOG_LEVEL: 'silent', BANTU_PUBLIC_URL: 'https://bantu.example.com', ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}), ...env });
      assert.ok(result.ok);
      return result.config;
    };
    const client = async (url: string, ca: string, method: string, pathname: string, options: { basic?: string; auth?: string; json?: unknown }) => {
      const headers: Record<string, string> = {};
      if (options.basic) headers.authorization = `Basic ${Buffer.from(`${options.basic}:`).toString('base64')}`;
      if (options.auth) headers.authorization = `Bearer ${options.auth}`;
      if (options.json) headers['content-type'] = 'application/json';
      const agent = new Agent({ connect: { ca } });
      try {
        const response = await undiciRequest(`${url}${pathname}`, { method: method as 'GET', headers, body: options.json ? JSON.stringify(options.json) : undefined, dispatcher: agent });
        return { status: response.statusCode, json: (await response.body.json().catch(() => undefined)) as TestResponse['json'] };
      } finally {
        await agent.close();
      }
    };
    try {
      const first = createApp(configWith({}), pino({ level: 'silent' }));
      let token: string;
      let kid: unknown;
      try {
        const started = await first.start();
        const ca = await fs.readFile(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
        const keys = JSON.parse(await fs.readFile(path.join(dataDir, 'secrets', 'default-tenant.json'), 'utf8')).keys;
        const registered = await client(started.url, ca, 'POST', '/v1/auth/register', { basic: keys.test.application_key, json: { email: 'r@example.com', password: PASSWORD, name: 'R' } });
        assert.equal(registered.status, 201);
        token = registered.json.access_token;
        kid = decodeProtectedHeader(token).kid;
        const { rows } = await sql<{ private_enc: Buffer }>`select private_enc from identity.signing_key`.execute(first.databases.environments.test);
        assert.equal(rows.length, 1);
        assert.equal(rows[0]?.private_enc[0], 1, 'sealed, version 1');
      } finally {
        await first.close();
      }

      const second = createApp(configWith({}), pino({ level: 'silent' }));
      try {
        const started = await second.start();
        const ca = await fs.readFile(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
        const me = await client(started.url, ca, 'GET', '/v1/users/me', { auth: token });
        assert.equal(me.status, 200, 'the token of the first run verifies after a restart');
        const jwks = await client(started.url, ca, 'GET', '/.well-known/jwks.json', {});
        assert.ok(jwks.json.keys.some((k: { kid: string }) => k.kid === kid), 'same key, not a new one');
      } finally {
        await second.close();
      }

      const wrongSecret = createApp(configWith({ BANTU_SECRET_KEY: 'x'.repeat(40) }), pino({ level: 'silent' }));
      try {
        await assert.rejects(wrongSecret.start(), /cannot decrypt the (live|test) JWT signing key/);
      } finally {
        await wrongSecret.close();
      }
    } finally {
      if (databaseUrl) await dropDatabases(databaseUrl);
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  });
});
