import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { resetTokenIn, waitForMails } from '../helpers/mail.ts';
import { startServer, type TestServer } from '../helpers/server.ts';

/**
 * Login throttling on the machine's Redis (REDIS_URL, default redis://127.0.0.1:6379): two
 * Bantu processes of one installation share their limits, and a Redis outage answers 503 at
 * once and recovers by itself. Server A reaches Redis through a TCP proxy the test can cut.
 */
const REDIS_URL = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const PER_ADDRESS_MAX = 50; // DEFAULT_LOGIN_LIMITS.perAddress.max

/** A TCP proxy to Redis that can drop every connection and refuse new ones, then come back. */
async function redisProxy() {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(REDIS_URL.port || 6379), REDIS_URL.hostname);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => socket.destroy());
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `redis://127.0.0.1:${port}`,
    async cut() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
    },
    async restore() {
      await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('login throttling on Redis', () => {
  const prefix = `bantu-test:${randomBytes(6).toString('hex')}:`;
  let proxy: Awaited<ReturnType<typeof redisProxy>>;
  let a: TestServer;
  let b: TestServer;
  const logA: string[] = [];

  before(async () => {
    proxy = await redisProxy();
    const destination = new Writable({
      write(chunk, _encoding, done) {
        logA.push(String(chunk));
        done();
      },
    });
    a = await startServer({ REDIS_URL: proxy.url, BANTU_REDIS_PREFIX: prefix, BANTU_LOG_LEVEL: 'info' }, { logDestination: destination });
    b = await startServer({ REDIS_URL: REDIS_URL.toString(), BANTU_REDIS_PREFIX: prefix });
  });

  after(async () => {
    await a?.close();
    await b?.close();
    await proxy?.close();
    const redis = new Redis(REDIS_URL.toString());
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length) await redis.del(...keys);
    await redis.quit();
  });

  const login = (server: TestServer, email: string) =>
    server.request('POST', '/v1/auth/login', { basic: server.keys.test.application_key, json: { email, password: 'wrong password' } });

  it('reports Redis in /readyz', async () => {
    const ready = await a.request('GET', '/readyz');
    assert.equal(ready.status, 200);
    assert.deepEqual(ready.json.dependencies.redis, { status: 'ok' });
  });

  it('failures counted by one process throttle the same address on another', async () => {
    // Each attempt names another (unknown) account, so only the per-address limit is reached.
    for (let i = 0; i < PER_ADDRESS_MAX; i++) assert.equal((await login(a, `nobody${i}@example.com`)).status, 401);
    const throttled = await login(b, 'someone-else@example.com');
    assert.equal(throttled.status, 429);
    assert.equal(throttled.json.code, 'rate_limited');
    assert.ok(Number(throttled.headers['retry-after']) > 0);
    // The counter is one key of this installation's prefix, with the window as its expiry.
    const redis = new Redis(REDIS_URL.toString());
    try {
      const ttl = await redis.pttl(`${prefix}login:ip:127.0.0.1`);
      assert.ok(ttl > 0 && ttl <= 15 * 60_000, `pttl ${ttl}`);
    } finally {
      await redis.quit();
    }
  });

  /** Polls /readyz (bounded) until it answers 200, as it does once ioredis has reconnected; returns the last status. */
  const readinessOnceRedisAnswers = async (server: TestServer) => {
    let status = 0;
    for (let i = 0; i < 50 && status !== 200; i++) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      status = (await server.request('GET', '/readyz')).status;
    }
    return status;
  };

  const mailsOf = async (server: TestServer) => (await fs.readdir(path.join(server.dataDir, 'mail')).catch(() => [] as string[])).filter((f) => f.endsWith('.eml'));

  it('password recovery through an outage: forgot still answers 202 (sending nothing), a reset that committed answers 204', async () => {
    const key = a.keys.test.application_key;
    const registered = await a.request('POST', '/v1/auth/register', { basic: key, json: { email: 'reset-me@example.com', password: 'first password 1', name: 'Reset Me' } });
    assert.equal(registered.status, 201);
    assert.equal((await a.request('POST', '/v1/auth/password/forgot', { basic: key, json: { email: 'reset-me@example.com' } })).status, 202);
    const [mail] = await waitForMails(a.dataDir, 1);
    const token = resetTokenIn(await fs.readFile(mail as string, 'utf8'));

    await proxy.cut();
    try {
      const forgot = await a.request('POST', '/v1/auth/password/forgot', { basic: key, json: { email: 'reset-me@example.com' } });
      assert.equal(forgot.status, 202, 'the answer never tells known addresses apart, outage or not');
      const reset = await a.request('POST', '/v1/auth/password/reset', { basic: key, json: { token, password: 'second password 2' } });
      assert.equal(reset.status, 204, 'the reset committed, so it is a success even though the counters could not be cleared');
    } finally {
      await proxy.restore();
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal((await mailsOf(a)).length, 1, 'no mail went out without its rate limit');
    const ready = await readinessOnceRedisAnswers(a);
    assert.equal(ready, 200);
  });

  it('with Redis out of reach, logins answer 503 at once and /readyz says so; both recover with it', async () => {
    const throttledEvents = async () => {
      const audit = await a.request('GET', '/v1/audit?limit=200', { auth: a.keys.test.account_key });
      assert.equal(audit.status, 200);
      return audit.json.data.filter((event: { type: string }) => event.type === 'login_throttled').length;
    };
    const throttledBefore = await throttledEvents();
    await proxy.cut();
    const down = await login(a, 'someone@example.com');
    assert.equal(down.status, 503);
    assert.equal(down.json.code, 'service_unavailable');
    assert.equal(down.headers['retry-after'], '5');
    assert.match(String(down.headers['content-type']), /application\/problem\+json/);
    assert.doesNotMatch(down.text, /127\.0\.0\.1|ECONNREFUSED|ioredis|redis/i, 'no internal detail reaches the client');
    const notReady = await a.request('GET', '/readyz');
    assert.equal(notReady.status, 503);
    assert.equal(notReady.json.dependencies.redis.status, 'down');
    assert.equal(await throttledEvents(), throttledBefore, 'an outage is not recorded as a throttled login');

    await proxy.restore();
    const ready = await readinessOnceRedisAnswers(a);
    assert.equal(ready, 200, 'ready again once Redis answers');
    // The counters outlived the outage: the address is still throttled.
    assert.equal((await login(a, 'someone@example.com')).status, 429);
    // The operator reads one line when the connection is lost and one when it is back, per
    // outage (two in this suite), however many reconnection attempts there were.
    const messages = logA.map((line) => JSON.parse(line).msg as string);
    assert.equal(messages.filter((m) => m.startsWith('Redis connection lost')).length, 2);
    assert.equal(messages.filter((m) => m === 'Redis connection back').length, 2);
  });
});
