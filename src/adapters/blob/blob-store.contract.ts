import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { type BlobStore, BlobTooLargeError } from '../../core/ports.ts';

/**
 * The contract every BlobStore driver passes (disk now, S3 later). `make` gives a fresh,
 * empty store; `inFlight` counts the driver's partial uploads (temp files, multipart
 * uploads) so the suite can check a failed put leaves nothing behind.
 */
export interface BlobStoreHarness {
  make(): Promise<BlobStore>;
  inFlight(store: BlobStore): Promise<number>;
}

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

async function readAll(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Yields `total` random bytes in chunks, then optionally fails: a client that goes away. */
async function* chunks(total: number, chunkSize: number, failAfter?: number): AsyncIterable<Buffer> {
  let sent = 0;
  while (sent < total) {
    if (failAfter !== undefined && sent >= failAfter) throw new Error('client went away');
    const size = Math.min(chunkSize, total - sent);
    sent += size;
    yield randomBytes(size);
  }
}

async function keysOf(store: BlobStore): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.list()) keys.push(info.key);
  return keys.sort();
}

export function blobStoreContract(driver: string, harness: BlobStoreHarness): void {
  describe(`BlobStore contract: ${driver}`, () => {
    it('puts bytes under their sha256 and gets them back, whole and by range', async () => {
      const store = await harness.make();
      const data = randomBytes(300_000);
      const stored = await store.put(Readable.from([data.subarray(0, 1000), data.subarray(1000)]));
      assert.equal(stored.sha256, sha(data));
      assert.equal(stored.size, data.length);
      assert.equal(stored.key, stored.sha256);
      assert.deepEqual(await readAll(await store.get(stored.key)), data);
      assert.deepEqual(await readAll(await store.get(stored.key, { start: 10, end: 19 })), data.subarray(10, 20));
      assert.deepEqual(await readAll(await store.get(stored.key, { start: data.length - 1, end: data.length - 1 })), data.subarray(-1));
      const info = await store.stat(stored.key);
      assert.equal(info?.size, data.length);
      assert.ok(info?.modifiedAt instanceof Date);
    });

    it('stores an empty blob', async () => {
      const store = await harness.make();
      const stored = await store.put(Readable.from([]));
      assert.equal(stored.size, 0);
      assert.equal(stored.sha256, sha(Buffer.alloc(0)));
      assert.equal((await readAll(await store.get(stored.key))).length, 0);
    });

    it('stores equal bytes once', async () => {
      const store = await harness.make();
      const data = randomBytes(5000);
      const first = await store.put(Readable.from([data]));
      const second = await store.put(Readable.from([data]));
      assert.equal(first.key, second.key);
      assert.deepEqual(await keysOf(store), [first.key]);
    });

    it('refuses content over maxBytes and keeps nothing', async () => {
      const store = await harness.make();
      await assert.rejects(store.put(chunks(10_000, 1000), { maxBytes: 9_999 }), BlobTooLargeError);
      assert.deepEqual(await keysOf(store), []);
      assert.equal(await harness.inFlight(store), 0);
      const exact = await store.put(chunks(10_000, 1000), { maxBytes: 10_000 });
      assert.equal(exact.size, 10_000);
    });

    it('keeps nothing when the source fails mid-way', async () => {
      const store = await harness.make();
      await assert.rejects(store.put(chunks(100_000, 4096, 50_000)), /client went away/);
      assert.deepEqual(await keysOf(store), []);
      assert.equal(await harness.inFlight(store), 0);
    });

    it('answers stat null and get ENOENT for a missing key; delete is idempotent', async () => {
      const store = await harness.make();
      const missing = sha(Buffer.from('never stored'));
      assert.equal(await store.stat(missing), null);
      await assert.rejects(store.get(missing), (error: NodeJS.ErrnoException) => error.code === 'ENOENT');
      const stored = await store.put(Readable.from([Buffer.from('to delete')]));
      await store.delete(stored.key);
      await store.delete(stored.key);
      assert.equal(await store.stat(stored.key), null);
      assert.deepEqual(await keysOf(store), []);
    });

    it('stages bytes invisibly: commit makes them the blob, discard leaves nothing', async () => {
      const store = await harness.make();
      const data = randomBytes(70_000);
      const staged = await store.stage(Readable.from([data.subarray(0, 30_000), data.subarray(30_000)]));
      assert.equal(staged.sha256, sha(data));
      assert.equal(staged.size, data.length);
      assert.equal(await store.stat(staged.key), null, 'not visible before commit');
      await assert.rejects(store.get(staged.key), (error: NodeJS.ErrnoException) => error.code === 'ENOENT');
      assert.deepEqual(await keysOf(store), []);
      assert.deepEqual(await staged.commit(), { key: staged.key, sha256: staged.sha256, size: staged.size });
      assert.deepEqual(await readAll(await store.get(staged.key)), data);
      assert.equal(await harness.inFlight(store), 0);

      const dropped = await store.stage(Readable.from([randomBytes(10_000)]));
      await dropped.discard();
      assert.equal(await store.stat(dropped.key), null);
      assert.deepEqual(await keysOf(store), [staged.key]);
      assert.equal(await harness.inFlight(store), 0, 'a discarded stage leaves no partial upload');
    });

    it('discarding a stage never touches a stored blob of the same bytes', async () => {
      const store = await harness.make();
      const data = randomBytes(20_000);
      const stored = await store.put(Readable.from([data]));
      const twin = await store.stage(Readable.from([data]));
      assert.equal(twin.key, stored.key);
      await twin.discard();
      assert.deepEqual(await readAll(await store.get(stored.key)), data);
    });

    it('stage refuses content over maxBytes and keeps nothing', async () => {
      const store = await harness.make();
      await assert.rejects(store.stage(chunks(10_000, 1000), { maxBytes: 9_999 }), BlobTooLargeError);
      assert.deepEqual(await keysOf(store), []);
      assert.equal(await harness.inFlight(store), 0);
    });

    it('keeps concurrent puts apart', async () => {
      const store = await harness.make();
      const datas = Array.from({ length: 8 }, (_, i) => randomBytes(50_000 + i));
      const stored = await Promise.all(datas.map((data) => store.put(Readable.from([data.subarray(0, 20_000), data.subarray(20_000)]))));
      for (const [i, blob] of stored.entries()) {
        assert.equal(blob.sha256, sha(datas[i] as Buffer));
        assert.deepEqual(await readAll(await store.get(blob.key)), datas[i]);
      }
      assert.equal((await keysOf(store)).length, 8);
    });
  });
}
