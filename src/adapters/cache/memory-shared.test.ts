import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryReadThroughCache } from './memory-cache.ts';
import { MemoryRevocationList } from './memory-revocations.ts';
import { readThroughCacheContract } from './read-through-cache.contract.ts';
import { revocationListContract } from './revocation-list.contract.ts';

revocationListContract('memory', {
  pair: async () => {
    const list = new MemoryRevocationList();
    return [list, list];
  },
});

readThroughCacheContract('memory', {
  pair: async () => {
    const cache = new MemoryReadThroughCache();
    return [cache, cache];
  },
});

describe('MemoryRevocationList', () => {
  it('sweeps expired revocations when it grows', async () => {
    let now = 0;
    const list = new MemoryRevocationList(10, () => now);
    for (let i = 0; i < 20; i++) await list.revoke([`user:${i}`], 100);
    now = 200;
    await list.revoke(['user:late'], 100);
    assert.equal((list as unknown as { revoked: Map<string, number> }).revoked.size, 1);
    assert.equal(await list.anyRevoked(['user:late']), true);
  });
});

describe('MemoryReadThroughCache', () => {
  it('stays bounded: when full it empties, and tickets handed out before stay too old', async () => {
    const cache = new MemoryReadThroughCache(3);
    for (const key of ['a', 'b', 'c']) await cache.fill(key, (await cache.read(key)).ticket, key, 60_000);
    const old = await cache.read('d');
    await cache.fill('e', (await cache.read('e')).ticket, 'e', 60_000); // full: empties
    for (const key of ['a', 'b', 'c', 'e']) assert.equal((await cache.read(key)).value, undefined, key);
    await cache.fill('d', old.ticket, 'stale', 60_000);
    assert.equal((await cache.read('d')).value, undefined);
    await cache.fill('d', (await cache.read('d')).ticket, 'd', 60_000);
    assert.equal((await cache.read('d')).value, 'd');
  });
});
