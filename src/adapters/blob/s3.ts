import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout } from 'node:timers/promises';
import {
  AbortMultipartUploadCommand,
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type { Logger } from 'pino';
import { type BlobInfo, type BlobStore, BlobTooLargeError, type ByteRange, type StagedBlob, type StoredBlob } from '../../core/ports.ts';
import { ContentHash } from './content-hash.ts';
import { openBucket, serviceOf, whereOf } from './s3-bucket.ts';
import { asStoreError, createS3Client, type S3ClientTuning, type S3Location, statusOf, unavailable } from './s3-client.ts';
import { copyInParts } from './s3-copy.ts';

/**
 * The S3 blob store: one bucket per environment (`<prefix>-live`, `<prefix>-test`), for any
 * S3-compatible server (AWS S3, MinIO, Garage, Ceph RGW; tested against s3rver).
 *
 * Layout, the same as on disk: a blob is the object `<ab>/<sha256>` (`ab` its first two hex
 * digits); uploads in flight are `tmp/<random>`.
 *
 * Write order. S3 has no rename, and the content address is known only once the last byte has
 * been hashed, so `stage` streams the bytes to a temp key (lib-storage: one PutObject when they
 * fit in a part, a multipart upload otherwise), hashing them on the way, and checks that the
 * finished object holds exactly the bytes sent; `commit` copies it to its content address
 * (CopyObject, inside the server: no byte goes through Bantu again) and deletes the temp
 * object; `discard` deletes it. The caller records the blob in the database only after
 * `commit` resolves, so a row never points at an object that is not complete. Each part is
 * sent as a buffer whose SHA-256 is in its SigV4 signature (`x-amz-content-sha256`), which the
 * server checks on receipt; the blob's key is the SHA-256 of exactly those bytes.
 *
 * Memory: lib-storage holds at most `queueSize` parts in flight plus the one filling, and cuts
 * a part by concatenating its chunks: (queueSize + 2) * partSize at worst per upload, 40 MiB
 * with the defaults (8 MiB parts, 3 at a time) whatever the upload's size.
 *
 * Failures. The SDK retries (maxAttempts, standard backoff) and times out every request (see
 * `createS3Client`), so nothing waits forever; then the store throws a 503
 * `service_unavailable` with Retry-After, never a 500. A missing key is an `ENOENT` as on disk.
 * A failed upload aborts its multipart upload and deletes its temp object; when S3 itself is
 * what failed, that cleanup runs in the background (it would only wait on the same dead
 * server) and what it cannot remove is left to `removeOrphanTempFiles`, which runs at open and
 * every `sweepEveryMs`, and removes temp objects and multipart uploads older than a grace
 * period that this process is not writing (processes on other machines cannot be asked).
 */
const SHA256_KEY = /^[0-9a-f]{64}$/;
/** `<ab>/<sha256>` whose folder is its key's first two digits. */
const BLOB_OBJECT = /^([0-9a-f]{2})\/(\1[0-9a-f]{62})$/;
const TEMP_PREFIX = 'tmp/';
/** Tries of a commit's copy refused with a 5xx while the blob is not there yet, and the first pause between them (growing, with jitter). */
const COPY_TRIES = 4;
const COPY_BACKOFF_MS = 50;
const MiB = 1024 * 1024;
/** CopyObject copies at most this much in one request: the largest blob this store takes. */
export const S3_MAX_OBJECT_BYTES = 5 * 1024 ** 3;

export interface S3BlobStoreOptions {
  /** Bytes per upload part (at least 5 MiB, S3's minimum). Default 8 MiB. */
  partSize?: number;
  /** Parts uploaded at once per upload. Default 3. */
  queueSize?: number;
  /** Temp objects and multipart uploads younger than this are never swept: their writer may be alive elsewhere. Default 24 h. */
  orphanGraceMs?: number;
  /** How often the sweep runs after the one at open; 0: only at open. Default 1 h. */
  sweepEveryMs?: number;
  /** For the background cleanups and sweeps, which have no caller to tell. */
  logger?: Pick<Logger, 'warn' | 'info'>;
  /** For messages: where the bucket is (the endpoint, or AWS). */
  where?: string;
  /**
   * Which S3 service the client speaks to (endpoint, region, keys): stores of the same service
   * copy blobs between their buckets inside it (`copyFrom`). Unset: copies only from itself.
   */
  service?: string;
  /** Server-side copies larger than this go in parts of this size (UploadPartCopy), a few at once. Default 64 MiB. */
  copyPartSize?: number;
}

const notFoundError = (key: string) => Object.assign(new Error(`no blob ${key}`), { code: 'ENOENT' });


export class S3BlobStore implements BlobStore {
  /** Temp keys this process is writing: never swept, whatever their age. */
  private readonly writing = new Set<string>();
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly graceMs: number;
  private readonly copyPartSize: number;
  private readonly service: string;
  private readonly logger?: Pick<Logger, 'warn' | 'info'>;
  private timer?: NodeJS.Timeout;
  private sweeping: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly client: S3Client,
    readonly bucket: string,
    options: S3BlobStoreOptions,
  ) {
    this.partSize = Math.max(options.partSize ?? 8 * MiB, 5 * MiB);
    this.queueSize = options.queueSize ?? 3;
    this.graceMs = options.orphanGraceMs ?? 24 * 3600 * 1000;
    this.copyPartSize = Math.max(options.copyPartSize ?? 64 * MiB, 5 * MiB);
    this.service = options.service ?? `bucket ${bucket}`;
    this.logger = options.logger;
  }

  /**
   * Opens the store on `bucket`, creating the bucket when it does not exist, and checks that it
   * can write there (a probe object, put and deleted): credentials or permissions that cannot
   * serve fail the start here, with an `S3UnusableError` naming the bucket, rather than the
   * first upload. Then sweeps what dead writers left. `client` is the caller's to destroy.
   */
  static async open(client: S3Client, bucket: string, options: S3BlobStoreOptions = {}): Promise<S3BlobStore> {
    await openBucket(client, bucket, options.where);
    const store = new S3BlobStore(client, bucket, options);
    await store.sweep();
    const every = options.sweepEveryMs ?? 3600 * 1000;
    if (every > 0) {
      store.timer = setInterval(() => {
        store.sweeping = store.sweep();
      }, every);
      store.timer.unref();
    }
    return store;
  }

  /** Stops the periodic sweep (waiting for one under way). The client stays open: it is shared. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.sweeping;
  }

  /** For readiness: the bucket answers. */
  async ping(): Promise<void> {
    await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
  }

  private async sweep(): Promise<void> {
    try {
      const removed = await this.removeOrphanTempFiles();
      if (removed.length > 0) this.logger?.info({ bucket: this.bucket, removed }, 'removed uploads left by writers that are gone');
    } catch (error) {
      this.logger?.warn({ err: error, bucket: this.bucket }, 'could not sweep abandoned uploads; retrying later');
    }
  }

  /**
   * Deletes temp objects and aborts multipart uploads older than the grace period (or
   * `olderThanMs`) that this process is not writing: uploads whose process died, or whose
   * cleanup failed while S3 was down. Returns what it removed.
   */
  async removeOrphanTempFiles(options: { olderThanMs?: number } = {}): Promise<string[]> {
    const cutoff = Date.now() - (options.olderThanMs ?? this.graceMs);
    const removed: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: TEMP_PREFIX, ContinuationToken: token }));
      for (const object of page.Contents ?? []) {
        if (!object.Key || this.writing.has(object.Key) || (object.LastModified?.getTime() ?? 0) >= cutoff) continue;
        await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: object.Key }));
        removed.push(object.Key);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    do {
      // Every prefix: a server-side copy in parts writes to the blob's own key.
      const page = await this.client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }));
      for (const upload of page.Uploads ?? []) {
        if (!upload.Key || !upload.UploadId || this.writing.has(upload.Key) || (upload.Initiated?.getTime() ?? 0) >= cutoff) continue;
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: upload.Key, UploadId: upload.UploadId }));
        removed.push(`${upload.Key} (multipart upload ${upload.UploadId})`);
      }
      const more = page.IsTruncated === true;
      keyMarker = more ? page.NextKeyMarker : undefined;
      uploadIdMarker = more ? page.NextUploadIdMarker : undefined;
    } while (keyMarker);
    return removed;
  }

  private objectOf(key: string): string {
    if (!SHA256_KEY.test(key)) throw notFoundError(key);
    return `${key.slice(0, 2)}/${key}`;
  }

  async put(source: AsyncIterable<Uint8Array>, options: { maxBytes?: number } = {}): Promise<StoredBlob> {
    return (await this.stage(source, options)).commit();
  }

  /** Streams to a temp object while hashing; `commit` copies it to its content address. */
  async stage(source: AsyncIterable<Uint8Array>, options: { maxBytes?: number } = {}): Promise<StagedBlob> {
    const maxBytes = Math.min(options.maxBytes ?? Number.POSITIVE_INFINITY, S3_MAX_OBJECT_BYTES);
    const temp = `${TEMP_PREFIX}${randomBytes(12).toString('hex')}`;
    const hash = new ContentHash();
    let size = 0;
    // A failure of the source (the client gone, too many bytes) is thrown as it is: the
    // upload it breaks is only its consequence.
    let sourceFailure: { error: unknown } | undefined;
    async function* measured(): AsyncIterable<Uint8Array> {
      try {
        for await (const chunk of source) {
          size += chunk.byteLength;
          if (size > maxBytes) throw new BlobTooLargeError(maxBytes);
          const backlog = hash.update(chunk);
          if (backlog) await backlog;
          yield chunk;
        }
      } catch (error) {
        sourceFailure = { error };
        throw error;
      }
    }
    this.writing.add(temp);
    const upload = new Upload({
      client: this.client,
      // One chunk read ahead at most: the parts are the only buffers.
      params: { Bucket: this.bucket, Key: temp, Body: Readable.from(measured(), { highWaterMark: 1 }) },
      partSize: this.partSize,
      queueSize: this.queueSize,
      // Aborted here instead, so that a failing abort never hides what failed first.
      leavePartsOnError: true,
    });
    try {
      await upload.done();
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: temp }));
      if (head.ContentLength !== size) throw unavailable(new Error(`S3 holds ${head.ContentLength} bytes under ${temp}, ${size} were sent`));
    } catch (error) {
      const failure = sourceFailure as { error: unknown } | undefined;
      // S3 is healthy when the source failed: clean up before answering. When S3 failed,
      // cleaning up would wait on it too: do it in the background (the sweep is the backstop).
      const cleanup = this.removeUpload(temp, upload.uploadId);
      hash.abandon();
      if (failure) await cleanup;
      throw failure ? failure.error : asStoreError(error);
    }
    let sha256: string;
    try {
      sha256 = await hash.digest();
    } catch (error) {
      await this.removeUpload(temp, undefined);
      throw error;
    }
    const blob = { key: sha256, sha256, size };
    return {
      ...blob,
      commit: async () => {
        try {
          await this.copyToAddress(temp, sha256, size);
        } catch (error) {
          void this.removeUpload(temp, undefined);
          throw asStoreError(error);
        }
        await this.removeUpload(temp, undefined);
        return blob;
      },
      discard: () => this.removeUpload(temp, undefined),
    };
  }

  /**
   * Copies the staged `temp` to the content address of `sha256`: over an existing copy of the
   * same bytes too, which refreshes its LastModified (the orphan sweeps' grace period relies on it).
   * Twins uploading the same bytes copy to one address at once, and some servers refuse all but
   * one (s3rver answers 500 InternalError, and its HEAD fails while another copy rewrites the
   * object): when the server answered 5xx and the blob is not there whole yet, a few tries,
   * backing off, tell that apart from S3 failing.
   */
  private async copyToAddress(temp: string, sha256: string, size: number): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.client.send(new CopyObjectCommand({ Bucket: this.bucket, Key: this.objectOf(sha256), CopySource: `${this.bucket}/${temp}` }));
        return;
      } catch (error) {
        const there = await this.stat(sha256).catch(() => null);
        if (there?.size === size) return;
        if (attempt >= COPY_TRIES || (statusOf(error) ?? 0) < 500) throw error;
        await setTimeout(COPY_BACKOFF_MS * attempt * (1 + Math.random()));
      }
    }
  }

  /** Best effort, never rejects: what it cannot remove stays for the sweep. */
  private async removeUpload(temp: string, uploadId: string | undefined): Promise<void> {
    try {
      if (uploadId) await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: temp, UploadId: uploadId }));
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: temp }));
    } catch (error) {
      this.logger?.warn({ err: error, bucket: this.bucket, key: temp, upload_id: uploadId }, 'could not remove an abandoned upload; the sweep will');
    } finally {
      this.writing.delete(temp);
    }
  }

  /**
   * Copies `source`'s blob `key` here inside S3 when `source` is a store of the same service:
   * CopyObject, or UploadPartCopy in parts of `copyPartSize` for a larger one (no single
   * request copies gigabytes against the request timeout). The bytes are not hashed again:
   * the source was hashed as it was written, and `bantu backup verify` reads copies back.
   */
  async copyFrom(source: BlobStore, key: string): Promise<StoredBlob | null> {
    if (!(source instanceof S3BlobStore) || source.service !== this.service) return null;
    const object = this.objectOf(key);
    let size: number;
    try {
      size = (await this.client.send(new HeadObjectCommand({ Bucket: source.bucket, Key: object }))).ContentLength ?? 0;
    } catch (error) {
      if (statusOf(error) === 404) throw Object.assign(notFoundError(key), { cause: error });
      throw asStoreError(error);
    }
    const copySource = `${source.bucket}/${object}`;
    try {
      if (size <= this.copyPartSize) await this.client.send(new CopyObjectCommand({ Bucket: this.bucket, Key: object, CopySource: copySource }));
      else {
        this.writing.add(object);
        try {
          await copyInParts(this.client, { bucket: this.bucket, object, copySource, size, partSize: this.copyPartSize, queueSize: this.queueSize, logger: this.logger });
        } finally {
          this.writing.delete(object);
        }
      }
      const copied = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: object }));
      if (copied.ContentLength !== size) throw unavailable(new Error(`S3 holds ${copied.ContentLength} bytes under ${object} in ${this.bucket}, ${size} were copied`));
    } catch (error) {
      throw asStoreError(error);
    }
    return { key, sha256: key, size };
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const object = this.objectOf(key);
    try {
      const answer = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: object, ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}) }),
      );
      return answer.Body as Readable;
    } catch (error) {
      if ((error as Error).name === 'NoSuchKey') throw Object.assign(notFoundError(key), { cause: error });
      throw asStoreError(error);
    }
  }

  async stat(key: string): Promise<BlobInfo | null> {
    if (!SHA256_KEY.test(key)) return null;
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.objectOf(key) }));
      return { key, size: head.ContentLength ?? 0, modifiedAt: head.LastModified ?? new Date(0) };
    } catch (error) {
      // HEAD answers carry no error code: a 404 is the missing object (a missing bucket fails the next write).
      if (statusOf(error) === 404) return null;
      throw asStoreError(error);
    }
  }

  async delete(key: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.objectOf(key) }));
    } catch (error) {
      throw asStoreError(error);
    }
  }

  async *list(): AsyncIterable<BlobInfo> {
    let token: string | undefined;
    do {
      let page: ListObjectsV2CommandOutput;
      try {
        page = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, ContinuationToken: token }));
      } catch (error) {
        throw asStoreError(error);
      }
      for (const object of page.Contents ?? []) {
        const key = BLOB_OBJECT.exec(object.Key ?? '')?.[2];
        if (!key) continue;
        yield { key, size: object.Size ?? 0, modifiedAt: object.LastModified ?? new Date(0) };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }
}

/** The two environments' stores of one S3 configuration, on one client. */
export interface S3Stores {
  live: S3BlobStore;
  test: S3BlobStore;
  /** Stops their sweeps and closes the client. */
  close(): Promise<void>;
}

/**
 * Opens `<bucketPrefix>-live` and `<bucketPrefix>-test` (creating them when missing), each
 * environment in its own bucket: live and test never share storage.
 */
export async function openS3Stores(
  location: S3Location & { bucketPrefix: string },
  options: S3BlobStoreOptions & { tuning?: S3ClientTuning } = {},
): Promise<S3Stores> {
  const client = createS3Client(location, options.tuning);
  const opened: S3BlobStore[] = [];
  try {
    const storeOptions = { ...options, where: options.where ?? whereOf(location), service: options.service ?? serviceOf(location) };
    for (const environment of ['live', 'test'] as const) opened.push(await S3BlobStore.open(client, `${location.bucketPrefix}-${environment}`, storeOptions));
  } catch (error) {
    for (const store of opened) await store.close();
    client.destroy();
    throw error;
  }
  const [live, test] = opened as [S3BlobStore, S3BlobStore];
  return {
    live,
    test,
    async close() {
      await Promise.all([live.close(), test.close()]);
      client.destroy();
    },
  };
}
