import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { counterStoreContract } from './counter-store.contract.ts';
import { MemoryCounterStore } from './memory.ts';

counterStoreContract('memory', { make: async () => new MemoryCounterStore() });

describe('MemoryCounterStore', () => {
  it('counts within a window and starts again after it', async () => {
    let now = 1_000;
    const store = new MemoryCounterStore(100, () => now);
    assert.deepEqual(await store.get('k'), { count: 0, resetInMs: 0 });
    assert.deepEqual(await store.increment('k', 500), { count: 1, resetInMs: 500 });
    now += 100;
    assert.deepEqual(await store.increment('k', 500), { count: 2, resetInMs: 400 });
    assert.deepEqual(await store.get('k'), { count: 2, resetInMs: 400 });
    now += 400;
    assert.deepEqual(await store.get('k'), { count: 0, resetInMs: 0 });
    assert.deepEqual(await store.increment('k', 500), { count: 1, resetInMs: 500 });
    await store.reset('k');
    assert.equal((await store.get('k')).count, 0);
  });

  it('stays bounded when full', async () => {
    const store = new MemoryCounterStore(10, () => 0);
    for (let i = 0; i < 50; i++) await store.increment(`k${i}`, 1_000);
    assert.equal((await store.get('k49')).count, 1);
    let live = 0;
    for (let i = 0; i < 50; i++) if ((await store.get(`k${i}`)).count > 0) live++;
    assert.ok(live <= 10);
  });
});
