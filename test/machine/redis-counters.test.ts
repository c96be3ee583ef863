import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { counterStoreContract } from '../../src/adapters/cache/counter-store.contract.ts';
import { RedisCounterStore } from '../../src/adapters/cache/redis.ts';
import { AppError } from '../../src/core/errors.ts';

/** The machine's Redis (REDIS_URL, default redis://127.0.0.1:6379); every store gets its own key prefix. */
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const prefixes: string[] = [];
const stores: RedisCounterStore[] = [];

async function makeStore(): Promise<RedisCounterStore> {
  const prefix = `bantu-test:${randomBytes(6).toString('hex')}:`;
  prefixes.push(prefix);
  const store = await RedisCounterStore.connect(REDIS_URL, { prefix });
  stores.push(store);
  return store;
}

after(async () => {
  await Promise.all(stores.map((store) => store.close()));
  const redis = new Redis(REDIS_URL);
  for (const prefix of prefixes) {
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length) await redis.del(...keys);
  }
  await redis.quit();
});

counterStoreContract('redis', { make: makeStore });

describe('RedisCounterStore', () => {
  it('keeps each counter as one prefixed key that Redis expires with its window', async () => {
    const store = await makeStore();
    await store.increment('login:ip:192.0.2.1', 60_000);
    const redis = new Redis(REDIS_URL);
    try {
      const prefix = prefixes.at(-1);
      assert.equal(await redis.get(`${prefix}login:ip:192.0.2.1`), '1');
      const ttl = await redis.pttl(`${prefix}login:ip:192.0.2.1`);
      assert.ok(ttl > 59_000 && ttl <= 60_000, `pttl ${ttl}`);
      assert.deepEqual(await redis.keys('login:ip:192.0.2.1'), [], 'nothing is written outside the prefix');
    } finally {
      await redis.quit();
    }
  });

  it('two stores on the same prefix share their counters (two processes of one installation)', async () => {
    const one = await makeStore();
    const prefix = prefixes.at(-1) as string;
    const two = await RedisCounterStore.connect(REDIS_URL, { prefix });
    stores.push(two);
    await one.increment('shared', 60_000);
    assert.equal((await two.increment('shared', 60_000)).count, 2);
    await two.reset('shared');
    assert.equal((await one.get('shared')).count, 0);
  });

  it('refuses to start when Redis cannot be reached, naming REDIS_URL without its password', async () => {
    await assert.rejects(RedisCounterStore.connect('redis://:s3cret@127.0.0.1:1', { prefix: 'x:', commandTimeoutMs: 500 }), (error: Error) => {
      assert.match(error.message, /^REDIS_URL: cannot reach Redis at redis:\/\/\*\*\*@127\.0\.0\.1:1 \(connect ECONNREFUSED 127\.0\.0\.1:1\)$/);
      assert.doesNotMatch(error.message, /s3cret/);
      return true;
    });
  });

  it('never shows a password given in the query string', async () => {
    await assert.rejects(RedisCounterStore.connect('redis://127.0.0.1:1/0?password=s3cret', { prefix: 'x:', commandTimeoutMs: 500 }), (error: Error) => {
      assert.match(error.message, /^REDIS_URL: cannot reach Redis at redis:\/\/127\.0\.0\.1:1\/0 \(/);
      assert.doesNotMatch(error.message, /s3cret|password/);
      return true;
    });
  });

  it('a Redis that answers but cannot write (out of memory) is "unavailable" (503), not a bug (500)', async () => {
    // A private redis-server that refuses every write: the machine's one is shared with other tests.
    const port = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = probe.address() as net.AddressInfo;
        probe.close(() => resolve(port));
      });
    });
    const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--maxmemory', '1'], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      for (let ready = false; !ready; ) {
        const [chunk] = (await once(server.stdout, 'data')) as [Buffer];
        ready = /Ready to accept connections/.test(chunk.toString());
      }
      const store = await RedisCounterStore.connect(`redis://127.0.0.1:${port}`, { prefix: 'oom:' });
      try {
        await assert.rejects(store.increment('k', 1000), (error: unknown) => {
          assert.ok(error instanceof AppError, String(error));
          assert.equal(error.code, 'service_unavailable');
          assert.match(String((error.cause as Error).message), /^OOM/);
          return true;
        });
      } finally {
        await store.close();
      }
    } finally {
      server.kill();
      await once(server, 'exit');
    }
  });

  it('a key of the wrong type is a bug (the reply error), not "Redis is down"', async () => {
    const store = await makeStore();
    const redis = new Redis(REDIS_URL);
    try {
      await redis.lpush(`${prefixes.at(-1)}not-a-counter`, 'x');
    } finally {
      await redis.quit();
    }
    await assert.rejects(store.increment('not-a-counter', 1000), (error: Error) => {
      assert.ok(!(error instanceof AppError), 'not turned into service_unavailable');
      assert.match(error.message, /WRONGTYPE/);
      return true;
    });
  });
});
