import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ReadThroughCache } from '../../core/ports.ts';

/**
 * The contract every ReadThroughCache driver passes (memory, Redis). `pair` gives two handles
 * on one empty cache, as two processes of one installation see it (for memory, the same
 * object twice). Expiry is real time: short, with room for a round trip.
 */
export interface ReadThroughCacheHarness {
  pair(): Promise<[ReadThroughCache, ReadThroughCache]>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export function readThroughCacheContract(driver: string, harness: ReadThroughCacheHarness): void {
  describe(`ReadThroughCache contract: ${driver}`, () => {
    it('misses an unknown key; serves what was filled, byte for byte', async () => {
      const [cache] = await harness.pair();
      const first = await cache.read('user:a');
      assert.equal(first.value, undefined);
      const value = JSON.stringify({ name: 'Zoë\nsecond line', n: 1 });
      await cache.fill('user:a', first.ticket, value, 60_000);
      assert.equal((await cache.read('user:a')).value, value);
      assert.equal((await cache.read('user:A')).value, undefined, 'keys are compared exactly');
    });

    it('an invalidation through one handle is seen by the next read through the other', async () => {
      const [one, two] = await harness.pair();
      await one.fill('user:b', (await one.read('user:b')).ticket, 'old', 60_000);
      assert.equal((await two.read('user:b')).value, 'old');
      await one.invalidate('user:b');
      assert.equal((await two.read('user:b')).value, undefined);
      assert.equal((await one.read('user:b')).value, undefined);
    });

    it('a fill with a ticket taken before an invalidation is never served; one taken after is', async () => {
      const [reader, writer] = await harness.pair();
      // The reader misses and loads the old row; meanwhile the writer commits and invalidates.
      const before = await reader.read('user:c');
      await writer.invalidate('user:c');
      await reader.fill('user:c', before.ticket, 'stale', 60_000);
      assert.equal((await reader.read('user:c')).value, undefined);
      assert.equal((await writer.read('user:c')).value, undefined);
      const after = await reader.read('user:c');
      await reader.fill('user:c', after.ticket, 'fresh', 60_000);
      assert.equal((await writer.read('user:c')).value, 'fresh');
    });

    it('invalidating an unknown key is allowed, and keeps stale fills out', async () => {
      const [cache] = await harness.pair();
      const before = await cache.read('user:d');
      await cache.invalidate('user:d');
      await cache.invalidate('user:d');
      await cache.fill('user:d', before.ticket, 'stale', 60_000);
      assert.equal((await cache.read('user:d')).value, undefined);
    });

    it('forgets a value once its ttl has passed', async () => {
      const [cache] = await harness.pair();
      await cache.fill('user:e', (await cache.read('user:e')).ticket, 'brief', 100);
      assert.equal((await cache.read('user:e')).value, 'brief');
      await sleep(150);
      assert.equal((await cache.read('user:e')).value, undefined);
    });
  });
}
