import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { decodeJwt } from 'jose';
import { type Installation, startInstallation } from '../helpers/installation.ts';
import type { TestServer } from '../helpers/server.ts';

/**
 * Two processes of one installation on a private redis-server that the test stops and starts
 * again (empty, as a Redis without persistence comes back). While it is down: logins fail
 * closed, token checks and /users/me read the database, and what one process revokes the
 * other refuses all the same; once it is back, the revocations made meanwhile are in it.
 */
const PASSWORD = 'correct horse battery';

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

async function startRedis(port: number): Promise<ChildProcess> {
  const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'inherit'] });
  for (let ready = false; !ready; ) {
    const [chunk] = (await once(server.stdout as NodeJS.ReadableStream, 'data')) as [Buffer];
    ready = /Ready to accept connections/.test(chunk.toString());
  }
  server.stdout?.resume();
  return server;
}

async function stopRedis(server: ChildProcess | undefined): Promise<void> {
  if (!server || server.exitCode !== null) return;
  server.kill();
  await once(server, 'exit');
}

/** Polls (bounded) until `probe` holds; returns whether it did. */
async function eventually(probe: () => Promise<boolean>): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    if (await probe()) return true;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return false;
}

describe('identity through a Redis outage', () => {
  const prefix = `bantu-test:${randomBytes(6).toString('hex')}:`;
  let port: number;
  let redis: ChildProcess | undefined;
  let installation: Installation;
  let a: TestServer;
  let b: TestServer;

  before(async () => {
    port = await freePort();
    redis = await startRedis(port);
    installation = await startInstallation(2, { REDIS_URL: `redis://127.0.0.1:${port}`, BANTU_REDIS_PREFIX: prefix });
    [a, b] = installation.servers as [TestServer, TestServer];
  });

  after(async () => {
    await installation?.close();
    await stopRedis(redis);
  });

  const register = async (email: string) => {
    const response = await a.request('POST', '/v1/auth/register', { basic: a.keys.test.application_key, json: { email, password: PASSWORD, name: 'Before' } });
    assert.equal(response.status, 201, response.text);
    return response.json as { user: { id: string }; access_token: string; refresh_token: string };
  };
  const me = (server: TestServer, token: string) => server.request('GET', '/v1/users/me', { auth: token });

  it('fails logins closed, serves tokens and users from the database, and refuses what is revoked meanwhile; Redis gets those revocations back', async () => {
    const reader = await register('reader@example.com');
    const deleted = await register('deleted-in-outage@example.com');
    const leaving = await register('leaves-in-outage@example.com');
    for (const user of [reader, deleted, leaving]) assert.equal((await me(b, user.access_token)).status, 200);

    await stopRedis(redis);

    const login = await a.request('POST', '/v1/auth/login', { basic: a.keys.test.application_key, json: { email: 'reader@example.com', password: PASSWORD } });
    assert.equal(login.status, 503, 'logins fail closed');
    assert.equal(login.json.code, 'service_unavailable');
    const ready = await a.request('GET', '/readyz');
    assert.equal(ready.status, 503);
    assert.equal(ready.json.dependencies.redis.status, 'down');

    const read = await me(b, reader.access_token);
    assert.equal(read.status, 200, 'a live session is served from the database');
    assert.equal(read.json.email, 'reader@example.com');
    assert.equal((await a.request('PATCH', '/v1/users/me', { auth: reader.access_token, json: { name: 'During' } })).status, 200);
    assert.equal((await me(b, reader.access_token)).json.name, 'During', 'the cache is bypassed');

    assert.equal((await a.request('DELETE', `/v1/users/${deleted.user.id}`, { basic: a.keys.test.account_key })).status, 204);
    assert.equal((await me(b, deleted.access_token)).status, 401);
    assert.equal((await a.request('POST', '/v1/auth/logout', { auth: leaving.access_token, json: { refresh_token: leaving.refresh_token } })).status, 204);
    assert.equal((await me(b, leaving.access_token)).status, 401, 'B asks the database, which knows the session ended');
    assert.equal((await me(a, leaving.access_token)).status, 401);

    // Back, empty: A writes what it revoked meanwhile, and B reads it from Redis again.
    redis = await startRedis(port);
    for (const server of [a, b]) assert.ok(await eventually(async () => (await server.request('GET', '/readyz')).status === 200), 'ready again');
    const client = new Redis(`redis://127.0.0.1:${port}`);
    try {
      const session = decodeJwt(leaving.access_token).sid as string;
      assert.ok(await eventually(async () => (await client.exists(`${prefix}revoked:session:${session}`)) === 1), 'the logout reached Redis');
      assert.ok((await client.pttl(`${prefix}revoked:session:${session}`)) > 0);
    } finally {
      await client.quit();
    }
    assert.equal((await me(b, leaving.access_token)).status, 401);
    assert.equal((await me(b, reader.access_token)).status, 200);
    const back = await a.request('POST', '/v1/auth/login', { basic: a.keys.test.application_key, json: { email: 'reader@example.com', password: PASSWORD } });
    assert.equal(back.status, 200, 'logins work again');
  });
});
