import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CounterStore } from '../../core/ports.ts';

/**
 * The contract every CounterStore driver passes (memory, Redis). `make` gives a store with
 * no counters. Windows here are real time (Redis keeps its own clock), so they are short
 * and the checks allow for the milliseconds a round trip takes.
 */
export interface CounterStoreHarness {
  make(): Promise<CounterStore>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export function counterStoreContract(driver: string, harness: CounterStoreHarness): void {
  describe(`CounterStore contract: ${driver}`, () => {
    it('an unknown key counts zero, with no window', async () => {
      const store = await harness.make();
      assert.deepEqual(await store.get('never-seen'), { count: 0, resetInMs: 0 });
    });

    it('counts hits within one window, which starts at the first hit', async () => {
      const store = await harness.make();
      const first = await store.increment('k', 60_000);
      assert.equal(first.count, 1);
      assert.ok(first.resetInMs > 59_000 && first.resetInMs <= 60_000, `resetInMs ${first.resetInMs}`);
      await sleep(30);
      // A later hit does not move the window's end: a steady trickle cannot keep it open forever.
      const second = await store.increment('k', 60_000);
      assert.equal(second.count, 2);
      assert.ok(second.resetInMs < first.resetInMs, `${second.resetInMs} < ${first.resetInMs}`);
      const read = await store.get('k');
      assert.equal(read.count, 2);
      assert.ok(read.resetInMs > 0 && read.resetInMs <= second.resetInMs);
    });

    it('forgets a key when its window ends, then counts from one again', async () => {
      const store = await harness.make();
      await store.increment('short', 100);
      await store.increment('short', 100);
      await sleep(150);
      assert.deepEqual(await store.get('short'), { count: 0, resetInMs: 0 });
      assert.equal((await store.increment('short', 100)).count, 1);
    });

    it('reset forgets a key at once; other keys keep counting', async () => {
      const store = await harness.make();
      await store.increment('a', 60_000);
      await store.increment('b', 60_000);
      await store.reset('a');
      await store.reset('absent');
      assert.deepEqual(await store.get('a'), { count: 0, resetInMs: 0 });
      assert.equal((await store.get('b')).count, 1);
    });

    it('loses no hit when many land at once', async () => {
      const store = await harness.make();
      const results = await Promise.all(Array.from({ length: 50 }, () => store.increment('burst', 60_000)));
      assert.deepEqual(results.map((r) => r.count).sort((x, y) => x - y), Array.from({ length: 50 }, (_, i) => i + 1));
      assert.equal((await store.get('burst')).count, 50);
    });

    it('keeps keys that differ only in case or punctuation apart', async () => {
      const store = await harness.make();
      await store.increment('login:ip:Ab', 60_000);
      assert.equal((await store.get('login:ip:ab')).count, 0);
      assert.equal((await store.get('login:ip:Ab')).count, 1);
    });
  });
}
