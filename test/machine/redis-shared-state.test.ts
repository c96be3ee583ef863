import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { readThroughCacheContract } from '../../src/adapters/cache/read-through-cache.contract.ts';
import { RedisReadThroughCache } from '../../src/adapters/cache/redis-cache.ts';
import { RedisConnection } from '../../src/adapters/cache/redis-connection.ts';
import { RedisRevocationList } from '../../src/adapters/cache/redis-revocations.ts';
import { revocationListContract } from '../../src/adapters/cache/revocation-list.contract.ts';

/**
 * The revocation list and the read-through cache on the machine's Redis (REDIS_URL, default
 * redis://127.0.0.1:6379). Each pair is two connections on one fresh prefix: two processes of
 * one installation.
 */
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const prefixes: string[] = [];
const connections: RedisConnection[] = [];

async function connectionPair(): Promise<[RedisConnection, RedisConnection]> {
  const prefix = `bantu-test:${randomBytes(6).toString('hex')}:`;
  prefixes.push(prefix);
  const pair = [await RedisConnection.connect(REDIS_URL, { prefix }), await RedisConnection.connect(REDIS_URL, { prefix })] as [RedisConnection, RedisConnection];
  connections.push(...pair);
  return pair;
}

after(async () => {
  await Promise.all(connections.map((connection) => connection.close()));
  const redis = new Redis(REDIS_URL);
  for (const prefix of prefixes) {
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length) await redis.del(...keys);
  }
  await redis.quit();
});

revocationListContract('redis', {
  pair: async () => {
    const [one, two] = await connectionPair();
    return [new RedisRevocationList(one), new RedisRevocationList(two)];
  },
});

readThroughCacheContract('redis', {
  pair: async () => {
    const [one, two] = await connectionPair();
    return [new RedisReadThroughCache(one), new RedisReadThroughCache(two)];
  },
});

describe('Redis shared state', () => {
  it('keeps revocations and cache entries under the prefix, each with an expiry', async () => {
    const [connection] = await connectionPair();
    const prefix = prefixes.at(-1) as string;
    await new RedisRevocationList(connection).revoke(['session:ses_1'], 60_000);
    const cache = new RedisReadThroughCache(connection);
    await cache.fill('user:test:ten_1:usr_1', (await cache.read('user:test:ten_1:usr_1')).ticket, '{}', 5_000);
    await cache.invalidate('user:test:ten_1:usr_2');
    const redis = new Redis(REDIS_URL);
    try {
      const keys = (await redis.keys(`${prefix}*`)).sort();
      assert.deepEqual(keys, [`${prefix}cache:e:user:test:ten_1:usr_1`, `${prefix}cache:g:user:test:ten_1:usr_2`, `${prefix}revoked:session:ses_1`]);
      for (const key of keys) assert.ok((await redis.pttl(key)) > 0, `${key} expires`);
      assert.deepEqual(await redis.keys('revoked:*'), [], 'nothing is written outside the prefix');
    } finally {
      await redis.quit();
    }
  });
});
