import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { type BlobInfo, type BlobStore, BlobTooLargeError, type ByteRange, type StagedBlob, type StoredBlob } from '../../core/ports.ts';

/**
 * A blob store in memory, for unit tests of the domains on fakes of their ports: no
 * configuration picks it. It keeps the port's invariants but one: it holds every blob whole
 * in memory, which is what it is for. It passes the BlobStore contract (memory.test.ts).
 */
export class MemoryBlobStore implements BlobStore {
  /** The stored blobs by key. Open so that a test can damage one on purpose. */
  readonly blobs = new Map<string, { bytes: Buffer; modifiedAt: Date }>();
  /** Stages neither committed nor discarded yet. */
  pending = 0;

  async put(source: AsyncIterable<Uint8Array>, options: { maxBytes?: number } = {}): Promise<StoredBlob> {
    return (await this.stage(source, options)).commit();
  }

  async stage(source: AsyncIterable<Uint8Array>, options: { maxBytes?: number } = {}): Promise<StagedBlob> {
    const maxBytes = options.maxBytes ?? Number.POSITIVE_INFINITY;
    const chunks: Buffer[] = [];
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of source) {
      size += chunk.byteLength;
      if (size > maxBytes) throw new BlobTooLargeError(maxBytes);
      hash.update(chunk);
      chunks.push(Buffer.from(chunk));
    }
    const bytes = Buffer.concat(chunks);
    const sha256 = hash.digest('hex');
    const blob = { key: sha256, sha256, size };
    this.pending++;
    let settled = false;
    const settle = () => {
      if (settled) throw new Error('a staged blob is committed or discarded once');
      settled = true;
      this.pending--;
    };
    return {
      ...blob,
      commit: async () => {
        settle();
        // Equal bytes are stored once; a put of them again refreshes modifiedAt.
        this.blobs.set(sha256, { bytes: this.blobs.get(sha256)?.bytes ?? bytes, modifiedAt: new Date() });
        return { ...blob };
      },
      discard: async () => settle(),
    };
  }

  async get(key: string, range?: ByteRange): Promise<NodeJS.ReadableStream & AsyncIterable<Buffer>> {
    const blob = this.blobs.get(key);
    if (!blob) throw Object.assign(new Error(`no blob ${key}`), { code: 'ENOENT' });
    const bytes = range ? blob.bytes.subarray(range.start, range.end + 1) : blob.bytes;
    return Readable.from(bytes.length > 0 ? [bytes] : []);
  }

  async stat(key: string): Promise<BlobInfo | null> {
    const blob = this.blobs.get(key);
    return blob ? { key, size: blob.bytes.length, modifiedAt: blob.modifiedAt } : null;
  }

  async delete(key: string): Promise<void> {
    this.blobs.delete(key);
  }

  async *list(): AsyncIterable<BlobInfo> {
    // A snapshot: deleting while listing (a sweep) is safe.
    for (const [key, blob] of [...this.blobs]) yield { key, size: blob.bytes.length, modifiedAt: blob.modifiedAt };
  }
}
