import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { CreateMultipartUploadCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { multipartUploads, objectKeys, startS3rver, type TestS3 } from '../../../test/helpers/s3.ts';
import { loadConfig, type S3StoreConfig } from '../../core/config.ts';
import { AppError } from '../../core/errors.ts';
import type { BlobStore } from '../../core/ports.ts';
import { blobStoreContract } from './blob-store.contract.ts';
import { openS3Stores, type S3BlobStore, type S3Stores } from './s3.ts';
import { S3UnusableError } from './s3-bucket.ts';

const MiB = 1024 * 1024;
const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

let s3: TestS3;
const opened: S3Stores[] = [];
before(async () => {
  s3 = await startS3rver();
});
after(async () => {
  for (const stores of opened) await stores.close();
  await s3?.close();
});

let buckets = 0;
const freshPrefix = () => `c${++buckets}-${randomBytes(3).toString('hex')}`;

/** Stores as the platform opens them: from S3_* variables, through the config. */
async function storesFrom(env: Record<string, string>, which: 's3Blobs' | 's3Backups', options: Parameters<typeof openS3Stores>[1] = {}): Promise<S3Stores> {
  const result = loadConfig(env);
  assert.ok(result.ok, JSON.stringify(!result.ok && result.problems));
  const stores = await openS3Stores(result.config[which] as S3StoreConfig, { sweepEveryMs: 0, ...options });
  opened.push(stores);
  return stores;
}

async function inFlight(store: BlobStore): Promise<number> {
  const { client, bucket } = store as S3BlobStore;
  const temps = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'tmp/' }));
  const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: 'tmp/' }));
  return (temps.Contents?.length ?? 0) + (uploads.Uploads?.length ?? 0);
}

// The files store and the backup store are the same driver on other buckets (and maybe another
// endpoint): both pass the contract, each opened from its own variables.
blobStoreContract('s3, files (S3_BUCKET, live bucket)', {
  make: async () => (await storesFrom(s3.env({ S3_BUCKET: freshPrefix() }), 's3Blobs')).live,
  inFlight,
});
blobStoreContract('s3, backups (S3_BACKUP_BUCKET on S3_BACKUP_ENDPOINT, test bucket)', {
  make: async () =>
    (await storesFrom({ ...s3.env({ S3_BACKUP_BUCKET: freshPrefix() }), S3_ENDPOINT: 'http://127.0.0.1:1', S3_BACKUP_ENDPOINT: s3.endpoint }, 's3Backups')).test,
  inFlight,
});

/** Yields `total` random bytes in `chunk`-sized pieces, counting what was pulled, then optionally fails. */
function counted(total: number, chunk: number, failAt?: number) {
  const state = { pulled: 0, data: [] as Buffer[] };
  async function* source() {
    while (state.pulled < total) {
      if (failAt !== undefined && state.pulled >= failAt) throw new Error('client went away');
      const piece = randomBytes(Math.min(chunk, total - state.pulled));
      state.pulled += piece.length;
      state.data.push(piece);
      yield piece;
    }
  }
  return { state, source: source() };
}

async function readAll(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}

describe('S3BlobStore', () => {
  it('keeps the blob layout of the disk store, one bucket per environment', async () => {
    const prefix = freshPrefix();
    const stores = await storesFrom(s3.env({ S3_BUCKET: prefix }), 's3Blobs');
    const live = await stores.live.put(Readable.from([Buffer.from('live bytes')]));
    const test = await stores.test.put(Readable.from([Buffer.from('test bytes')]));
    const client = s3.client();
    try {
      assert.deepEqual(await objectKeys(client, `${prefix}-live`), [`${live.key.slice(0, 2)}/${live.key}`]);
      assert.deepEqual(await objectKeys(client, `${prefix}-test`), [`${test.key.slice(0, 2)}/${test.key}`]);
    } finally {
      client.destroy();
    }
  });

  it('commits each of 32 uploads of the same bytes copied over one object at once, though s3rver refuses all but one', async () => {
    const stores = await storesFrom(s3.env({ S3_BUCKET: freshPrefix() }), 's3Blobs');
    const bytes = Buffer.from('yy');
    const staged = await Promise.all(Array.from({ length: 32 }, () => stores.live.stage(Readable.from([bytes]))));
    const copiesBefore = s3.requests.filter((r) => r.copySource).length;
    // The first one in place, the others copy over it together, as twins uploading one file do.
    const committed = [await Promise.allSettled([staged[0]?.commit()]), await Promise.allSettled(staged.slice(1).map((blob) => blob.commit()))].flat();
    assert.deepEqual(
      committed.filter((result) => result.status === 'rejected').map((result) => String(result.reason)),
      [],
    );
    assert.ok(s3.requests.filter((r) => r.copySource).length - copiesBefore >= 32, 'each commit copied');
    const client = s3.client();
    try {
      assert.deepEqual(await objectKeys(client, stores.live.bucket), [`${sha(bytes).slice(0, 2)}/${sha(bytes)}`]);
    } finally {
      client.destroy();
    }
    assert.equal(await inFlight(stores.live), 0, 'no temp object left');
    assert.deepEqual(await readAll(await stores.live.get(sha(bytes))), bytes);
  });

  it('streams a large upload in parts, reading at most queueSize + 1 parts ahead of what S3 acknowledged', async () => {
    const partSize = 5 * MiB;
    const stores = await storesFrom(s3.env({ S3_BUCKET: freshPrefix() }), 's3Blobs', { partSize, queueSize: 2 });
    const chunk = 256 * 1024;
    const { state, source } = counted(40 * MiB, chunk);
    const held = s3.holdParts();
    const put = stores.live.put(source);
    // S3 answers no part: the store fills its queue, then stops reading.
    let last = -1;
    while (held.waiting() < 2 || state.pulled !== last) {
      last = state.pulled;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    assert.ok(state.pulled >= 2 * partSize, `read ${state.pulled} bytes: the queue should be full`);
    assert.ok(state.pulled <= 3 * partSize + 2 * chunk, `read ${state.pulled} bytes ahead of S3: more than queueSize + 1 parts`);
    held.release();
    const stored = await put;
    const data = Buffer.concat(state.data);
    assert.equal(stored.sha256, sha(data));
    assert.equal(stored.size, 40 * MiB);
    assert.deepEqual(await readAll(await stores.live.get(stored.key, { start: 6 * MiB, end: 6 * MiB + 99 })), data.subarray(6 * MiB, 6 * MiB + 100));
  });

  it('aborts the multipart upload of a source that fails after some parts, and throws the source error', async () => {
    const stores = await storesFrom(s3.env({ S3_BUCKET: freshPrefix() }), 's3Blobs', { partSize: 5 * MiB });
    const { state, source } = counted(30 * MiB, MiB, 12 * MiB);
    await assert.rejects(stores.test.put(source), /client went away/);
    assert.ok(state.pulled >= 12 * MiB, 'parts were sent before the failure');
    const client = s3.client();
    try {
      assert.deepEqual(await multipartUploads(client, stores.test.bucket), []);
      assert.deepEqual(await objectKeys(client, stores.test.bucket), []);
    } finally {
      client.destroy();
    }
  });

  it('sweeps temp objects and multipart uploads of writers that are gone, past the grace period, never its own', async () => {
    const stores = await storesFrom(s3.env({ S3_BUCKET: freshPrefix() }), 's3Blobs');
    const { client, bucket } = stores.live;
    // What a process that died mid-upload leaves behind.
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'tmp/deadbeef', Body: 'half an upload' }));
    await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: 'tmp/cafe' }));
    // Ours, staged and not committed yet.
    const staged = await stores.live.stage(Readable.from([Buffer.from('in flight here')]));

    assert.deepEqual(await stores.live.removeOrphanTempFiles(), [], 'younger than the grace period: kept');
    await new Promise((resolve) => setTimeout(resolve, 1100)); // S3 times have a resolution of one second
    const removed = await stores.live.removeOrphanTempFiles({ olderThanMs: 0 });
    assert.deepEqual(removed.map((entry) => entry.split(' ')[0]).sort(), ['tmp/cafe', 'tmp/deadbeef']);
    assert.equal(await inFlight(stores.live), 1, 'our staged upload stays');
    await staged.commit();
    assert.equal(await inFlight(stores.live), 0);
    assert.equal((await readAll(await stores.live.get(staged.key))).toString(), 'in flight here');
  });

  it('creates missing buckets at open, and refuses credentials that S3 refuses, naming the bucket', async () => {
    const prefix = freshPrefix();
    await storesFrom(s3.env({ S3_BUCKET: prefix }), 's3Blobs');
    const client = s3.client();
    try {
      await objectKeys(client, `${prefix}-live`);
      await objectKeys(client, `${prefix}-test`);
    } finally {
      client.destroy();
    }
    const env = { ...s3.env({ S3_BUCKET: prefix }), S3_ACCESS_KEY_ID: 'NOT-A-KEY' };
    await assert.rejects(storesFrom(env, 's3Blobs'), (error: Error) => {
      assert.ok(error instanceof S3UnusableError);
      assert.match(error.message, new RegExp(`^S3 bucket "${prefix}-live" at ${s3.endpoint} refuses these credentials: .* \\(HTTP 403\\)$`));
      assert.doesNotMatch(error.message, /S3RVER/, 'no secret in the message');
      return true;
    });
    await assert.rejects(storesFrom({ ...s3.env({ S3_BUCKET: prefix }), S3_ENDPOINT: 'http://127.0.0.1:1' }, 's3Blobs', { tuning: { maxAttempts: 1 } }), (error: Error) => {
      assert.ok(error instanceof S3UnusableError);
      assert.match(error.message, /^S3 bucket "\S+-live" at http:\/\/127\.0\.0\.1:1 cannot be reached \(.*ECONNREFUSED/);
      return true;
    });
  });

  it('S3 down: every call fails with 503 service_unavailable and Retry-After; back up, it works again', async () => {
    const stores = await storesFrom(s3.env({ S3_BUCKET: freshPrefix() }), 's3Blobs', { tuning: { maxAttempts: 2 } });
    const stored = await stores.live.put(Readable.from([Buffer.from('before the outage')]));
    await s3.stop();
    try {
      const unavailable = (error: unknown) => {
        assert.ok(error instanceof AppError, String(error));
        assert.equal(error.code, 'service_unavailable');
        assert.equal(error.status, 503);
        assert.equal(error.headers?.['Retry-After'], '5');
        return true;
      };
      await assert.rejects(stores.live.put(Readable.from([randomBytes(1000)])), unavailable);
      await assert.rejects(stores.live.stage(counted(12 * MiB, MiB).source), unavailable);
      await assert.rejects(stores.live.get(stored.key), unavailable);
      await assert.rejects(stores.live.stat(stored.key), unavailable);
      await assert.rejects(stores.live.delete(stored.key), unavailable);
      await assert.rejects(readAll(stores.live.list() as AsyncIterable<never>), unavailable);
    } finally {
      await s3.start();
    }
    assert.equal((await readAll(await stores.live.get(stored.key))).toString(), 'before the outage');
    const again = await stores.live.put(Readable.from([Buffer.from('after the outage')]));
    assert.equal((await stores.live.stat(again.key))?.size, 16);
  });

  it('S3 hanging (connections accepted, never answered): calls time out into a 503 instead of waiting', async () => {
    // A TCP relay to s3rver that, once `hang` is set, accepts connections and says nothing.
    const target = new URL(s3.endpoint);
    let hang = false;
    const sockets = new Set<net.Socket>();
    const relay = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
      if (hang) return;
      const upstream = net.connect(Number(target.port), target.hostname);
      upstream.on('error', () => socket.destroy());
      socket.pipe(upstream).pipe(socket);
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    const endpoint = `http://127.0.0.1:${(relay.address() as net.AddressInfo).port}`;
    try {
      const tuning = { maxAttempts: 2, requestTimeoutMs: 300, socketTimeoutMs: 300 };
      const stores = await storesFrom({ ...s3.env({ S3_BUCKET: freshPrefix() }), S3_ENDPOINT: endpoint }, 's3Blobs', { tuning });
      const stored = await stores.live.put(Readable.from([Buffer.from('through the relay')]));
      hang = true;
      for (const socket of sockets) socket.destroy();
      const unavailable = (error: unknown) => error instanceof AppError && error.code === 'service_unavailable';
      await assert.rejects(stores.live.put(Readable.from([randomBytes(1000)])), unavailable);
      await assert.rejects(stores.live.get(stored.key), unavailable);
      await assert.rejects(storesFrom({ ...s3.env({ S3_BUCKET: freshPrefix() }), S3_ENDPOINT: endpoint }, 's3Blobs', { tuning }), (error: Error) => {
        assert.ok(error instanceof S3UnusableError);
        assert.match(error.message, /cannot be reached/);
        return true;
      });
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => relay.close(resolve));
    }
  });
});

describe('S3BlobStore.copyFrom: server-side copies between buckets of one service', () => {
  /** A files store and a backup store as the platform opens them on one s3rver. */
  async function pair(options: Parameters<typeof openS3Stores>[1] = {}) {
    const env = s3.env({ S3_BUCKET: freshPrefix(), S3_BACKUP_BUCKET: freshPrefix() });
    return { files: (await storesFrom(env, 's3Blobs')).live, backups: (await storesFrom(env, 's3Backups', options)).live };
  }
  /** The requests s3rver received while `work` ran. */
  async function requestsDuring(work: () => Promise<unknown>) {
    const from = s3.requests.length;
    await work();
    return s3.requests.slice(from);
  }

  it('copies a blob with one CopyObject: no byte read through the process, the same bytes under the same key', async () => {
    const { files, backups } = await pair();
    const data = randomBytes(MiB + 7);
    const stored = await files.put(Readable.from([data]));
    const object = `${stored.key.slice(0, 2)}/${stored.key}`;
    let copied: unknown;
    const requests = await requestsDuring(async () => {
      copied = await backups.copyFrom(files, stored.key);
    });
    assert.deepEqual(copied, { key: stored.key, sha256: stored.key, size: data.length });
    assert.deepEqual(
      requests.filter((r) => r.copySource).map((r) => [r.method, r.path, r.copySource]),
      [['PUT', `/${backups.bucket}/${object}`, `${files.bucket}/${object}`]],
    );
    assert.ok(!requests.some((r) => r.method === 'GET'), 'no GET: the bytes never came through the process');
    assert.deepEqual(await readAll(await backups.get(stored.key)), data);
  });

  it('copies a blob larger than copyPartSize in parts (UploadPartCopy), leaving no multipart upload', async () => {
    const { files, backups } = await pair({ copyPartSize: 5 * MiB, queueSize: 2 });
    const data = randomBytes(12 * MiB + 3);
    const stored = await files.put(Readable.from([data]));
    const requests = await requestsDuring(() => backups.copyFrom(files, stored.key));
    const partCopies = requests.filter((r) => r.copySource && r.query.partNumber !== undefined);
    assert.deepEqual(partCopies.map((r) => r.query.partNumber).sort(), ['1', '2', '3']);
    assert.ok(!requests.some((r) => r.method === 'GET'), 'no GET: the bytes never came through the process');
    assert.deepEqual(await readAll(await backups.get(stored.key)), data);
    const client = s3.client();
    try {
      assert.deepEqual(await multipartUploads(client, backups.bucket), []);
    } finally {
      client.destroy();
    }
  });

  it('declines a source elsewhere (another S3 service, not S3), and a missing blob is ENOENT', async () => {
    const other = await startS3rver();
    try {
      const { files } = await pair();
      const stored = await files.put(Readable.from([Buffer.from('on the first server')]));
      const elsewhere = (await storesFrom({ ...s3.env({ S3_BACKUP_BUCKET: freshPrefix() }), S3_BACKUP_ENDPOINT: other.endpoint }, 's3Backups')).live;
      assert.equal(await elsewhere.copyFrom(files, stored.key), null);
      const { MemoryBlobStore } = await import('./memory.ts');
      assert.equal(await files.copyFrom(new MemoryBlobStore(), stored.key), null);
      const { backups } = await pair();
      await assert.rejects(backups.copyFrom(files, 'a'.repeat(64)), { code: 'ENOENT' });
    } finally {
      await other.close();
    }
  });
});
