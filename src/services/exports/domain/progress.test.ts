import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { throttledProgress } from './progress.ts';

describe('throttled progress', () => {
  it('writes the first update at once, then at most one per interval and one at a time, without waiting for it', async () => {
    let clock = 0;
    const writes: number[] = [];
    let release: () => void = () => undefined;
    const progress = throttledProgress(
      (n: number) => {
        writes.push(n);
        return new Promise<void>((resolve) => {
          release = resolve;
        });
      },
      250,
      () => clock,
    );
    await progress.update(1);
    clock = 300;
    await progress.update(2); // the first is still in flight: left out
    release();
    await progress.flush();
    clock = 400;
    await progress.update(3); // 400 ms after the last write: written
    release();
    await progress.flush();
    clock = 500;
    await progress.update(4); // 100 ms after the last: left out
    clock = 700;
    await progress.update(5);
    release();
    await progress.flush();
    assert.deepEqual(writes, [1, 3, 5]);
  });

  it('fails the next update and the flush once a write failed', async () => {
    let clock = 0;
    const progress = throttledProgress(async () => Promise.reject(new Error('database gone')), 250, () => clock);
    await progress.update(1);
    await assert.rejects(progress.flush(), /database gone/);
    clock = 1000;
    await assert.rejects(progress.update(2), /database gone/);
  });
});
