import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { type BlobInfo, type BlobStore, BlobTooLargeError, type ByteRange, type StagedBlob, type StoredBlob } from '../../core/ports.ts';
import { isProcessAlive } from '../local/data-dir.ts';
import { ContentHash } from './content-hash.ts';

/**
 * The local-folder blob store: one root per environment (`<data dir>/blobs/<env>/`).
 *
 * Layout: `tmp/` holds uploads in flight; a finished blob lives at `<ab>/<sha256>` where `ab`
 * is the first two hex digits (256 folders made at open, so no put has to create one).
 *
 * Write order, so that a crash at any moment leaves either no blob or a whole one:
 * temp file (exclusive create) -> write while hashing -> fsync the file -> rename to its
 * content address -> fsync the folder (the rename itself is durable). Callers record the
 * blob in the database only after `put` resolves. `stage` stops before the rename, which
 * `commit` does.
 */
const SHA256_KEY = /^[0-9a-f]{64}$/;
const WRITE_BUFFER = 1024 * 1024;
const READ_BUFFER = 1024 * 1024;

export interface DiskBlobStoreOptions {
  /** How many bytes the store writes at a time; also the read chunk size. */
  bufferBytes?: number;
}

async function fsyncPath(target: string): Promise<void> {
  const handle = await fs.open(target, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export class DiskBlobStore implements BlobStore {
  private constructor(
    readonly root: string,
    private readonly bufferBytes: number,
  ) {}

  /**
   * Opens (creating when needed) a store at `root`, and removes temp files that no live
   * process is writing: uploads cut short by a crash or a kill -9 never became blobs.
   */
  static async open(root: string, options: DiskBlobStoreOptions = {}): Promise<DiskBlobStore> {
    await fs.mkdir(path.join(root, 'tmp'), { recursive: true, mode: 0o700 });
    await Promise.all(
      Array.from({ length: 256 }, (_, i) => fs.mkdir(path.join(root, i.toString(16).padStart(2, '0')), { recursive: true, mode: 0o700 })),
    );
    await fsyncPath(root);
    const store = new DiskBlobStore(root, options.bufferBytes ?? WRITE_BUFFER);
    await store.removeOrphanTempFiles();
    return store;
  }

  /** Temp names start with the writer's pid; a temp file whose writer is gone is an orphan. */
  async removeOrphanTempFiles(): Promise<string[]> {
    const tmp = path.join(this.root, 'tmp');
    const removed: string[] = [];
    for (const name of await fs.readdir(tmp)) {
      const pid = Number.parseInt(name.split('-')[0] ?? '', 10);
      // Ours (an upload in flight here) or another live writer's (a second process on a shared volume).
      if (pid === process.pid || (Number.isInteger(pid) && pid > 0 && isProcessAlive(pid))) continue;
      await fs.rm(path.join(tmp, name), { force: true });
      removed.push(name);
    }
    return removed;
  }

  private pathOf(key: string): string {
    if (!SHA256_KEY.test(key)) throw Object.assign(new Error(`not a blob key: ${key}`), { code: 'ENOENT' });
    return path.join(this.root, key.slice(0, 2), key);
  }

  async put(source: AsyncIterable<Uint8Array>, options: { maxBytes?: number } = {}): Promise<StoredBlob> {
    return (await this.stage(source, options)).commit();
  }

  /** Writes, hashes and fsyncs a temp file; `commit` renames it to its content address. */
  async stage(source: AsyncIterable<Uint8Array>, options: { maxBytes?: number } = {}): Promise<StagedBlob> {
    const maxBytes = options.maxBytes ?? Number.POSITIVE_INFINITY;
    const temp = path.join(this.root, 'tmp', `${process.pid}-${randomBytes(12).toString('hex')}`);
    const hash = new ContentHash();
    let size = 0;
    // `flush` fsyncs the file before it is closed; the pipeline settles after the close.
    const sink = createWriteStream(temp, { flags: 'wx', mode: 0o600, flush: true, highWaterMark: this.bufferBytes });
    try {
      await pipeline(
        source,
        async function* measure(chunks: AsyncIterable<Uint8Array>) {
          for await (const chunk of chunks) {
            size += chunk.byteLength;
            if (size > maxBytes) throw new BlobTooLargeError(maxBytes);
            const backlog = hash.update(chunk);
            if (backlog) await backlog;
            yield chunk;
          }
        },
        sink,
      );
    } catch (error) {
      // The stream opens its file asynchronously: wait for it to close, or the open could
      // create the temp file after we removed it.
      if (!sink.closed) await once(sink, 'close').catch(() => undefined);
      await fs.rm(temp, { force: true });
      hash.abandon();
      throw error;
    }
    let sha256: string;
    try {
      sha256 = await hash.digest();
    } catch (error) {
      await fs.rm(temp, { force: true });
      throw error;
    }
    const blob = { key: sha256, sha256, size };
    return {
      ...blob,
      commit: async () => {
        const target = this.pathOf(sha256);
        try {
          // Same bytes already stored: renaming over them is harmless and refreshes the mtime
          // that the orphan sweep's grace period relies on.
          await fs.rename(temp, target);
        } catch (error) {
          await fs.rm(temp, { force: true });
          throw error;
        }
        await fsyncPath(path.dirname(target));
        return blob;
      },
      discard: () => fs.rm(temp, { force: true }),
    };
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const file = this.pathOf(key);
    // Open first, so a missing blob rejects here instead of failing a response mid-way.
    const handle = await fs.open(file, 'r');
    // A read stream allocates a whole highWaterMark for every read, plus one more read to find
    // the end: with a fixed 1 MiB, a 100 KiB blob cost 2 MiB of buffers and a copy (an export of
    // 1,000 such blobs spent a tenth of its time collecting them). So the buffer is the size of
    // what is read, up to READ_BUFFER, and the read stops at the size the open file has (a
    // stored blob never changes), with no read to find the end.
    let bounds = range;
    if (!bounds) {
      let size: number;
      try {
        size = (await handle.stat()).size;
      } catch (error) {
        await handle.close();
        throw error;
      }
      // An empty blob has no last byte to name: its first read finds the end.
      if (size > 0) bounds = { start: 0, end: size - 1 };
    }
    return createReadStream('', {
      fd: handle,
      highWaterMark: bounds ? Math.max(1, Math.min(READ_BUFFER, bounds.end - bounds.start + 1)) : 1,
      ...(bounds ? { start: bounds.start, end: bounds.end } : {}),
    });
  }

  async stat(key: string): Promise<BlobInfo | null> {
    try {
      const stats = await fs.stat(this.pathOf(key));
      return { key, size: stats.size, modifiedAt: stats.mtime };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw error;
    }
  }

  async delete(key: string): Promise<void> {
    const file = this.pathOf(key);
    await fs.rm(file, { force: true });
    await fsyncPath(path.dirname(file));
  }

  async *list(): AsyncIterable<BlobInfo> {
    for (let i = 0; i < 256; i++) {
      const folder = path.join(this.root, i.toString(16).padStart(2, '0'));
      for (const name of await fs.readdir(folder).catch(() => [] as string[])) {
        if (!SHA256_KEY.test(name)) continue;
        const stats = await fs.stat(path.join(folder, name)).catch(() => null);
        if (stats) yield { key: name, size: stats.size, modifiedAt: stats.mtime };
      }
    }
  }
}
