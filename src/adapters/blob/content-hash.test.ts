import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { ContentHash } from './content-hash.ts';

const MiB = 1024 * 1024;
const expected = (chunks: Uint8Array[]) => {
  const hash = createHash('sha256');
  for (const chunk of chunks) hash.update(chunk);
  return hash.digest('hex');
};

/** `total` random bytes in chunks of uneven sizes, as a socket delivers them. */
function chunksOf(total: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let left = total, i = 0; left > 0; i++) {
    const size = Math.min(left, [1, 7, 16_384, 65_536, 300_001][i % 5] as number);
    chunks.push(randomBytes(size));
    left -= size;
  }
  return chunks;
}

async function digestOf(chunks: Uint8Array[]): Promise<string> {
  const hash = new ContentHash();
  for (const chunk of chunks) await hash.update(chunk);
  return hash.digest();
}

describe('ContentHash (SHA-256 in place, then on the hashing thread)', () => {
  for (const [label, size] of [
    ['nothing', 0],
    ['one byte', 1],
    ['exactly one batch', MiB],
    ['one byte past a batch', MiB + 1],
    ['many batches', 9 * MiB + 12_345],
  ] as const) {
    it(`gives the SHA-256 of ${label}`, async () => {
      const chunks = chunksOf(size);
      assert.equal(await digestOf(chunks), expected(chunks));
    });
  }

  it('keeps concurrent uploads apart on the one thread', async () => {
    const uploads = [chunksOf(3 * MiB), chunksOf(5 * MiB + 1), chunksOf(2 * MiB + 7)];
    const digests = await Promise.all(uploads.map((chunks) => digestOf(chunks)));
    assert.deepEqual(digests, uploads.map(expected));
  });

  it('leaves the chunks it was given intact (it hashes copies)', async () => {
    const chunks = chunksOf(4 * MiB);
    const before = chunks.map((chunk) => Buffer.from(chunk));
    await digestOf(chunks);
    assert.deepEqual(chunks, before);
  });

  it('forgets an abandoned upload without disturbing the next', async () => {
    const abandoned = new ContentHash();
    for (const chunk of chunksOf(3 * MiB)) await abandoned.update(chunk);
    abandoned.abandon();
    const chunks = chunksOf(2 * MiB);
    assert.equal(await digestOf(chunks), expected(chunks));
  });
});
