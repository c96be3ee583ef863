import fs from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { ListMultipartUploadsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';
import { createS3Client, type S3ClientTuning } from '../../src/adapters/blob/s3-client.ts';
import { makeTempDir } from './server.ts';

/**
 * A real S3-compatible server for tests: s3rver on 127.0.0.1, on a free port, with a temp
 * folder of its own. It can be stopped and started again on the same port and folder (S3 down,
 * then back).
 *
 * s3rver 3.7 lacks three calls every server Bantu targets has: AbortMultipartUpload,
 * ListMultipartUploads and UploadPartCopy. `multipartExtras` adds them over s3rver's own folder
 * of uploads in progress (`<bucket>/._S3rver_uploads/<upload id>/`, holding the key and the
 * parts) and its store, so the driver's aborts, sweeps and server-side copies run against a
 * server instead of being left untested. They skip s3rver's access-key check (s3rver checks no
 * V4 signature anyway).
 */
export const S3RVER_KEY = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export interface TestS3 {
  endpoint: string;
  directory: string;
  /** A client with the right keys; `tuning` to make it give up quickly. */
  client(tuning?: S3ClientTuning): S3Client;
  /** The S3_* variables that point Bantu at this server. */
  env(vars: { S3_BUCKET?: string; S3_BACKUP_BUCKET?: string }): Record<string, string>;
  /** Every request so far, in arrival order (to see which calls a driver made). */
  requests: S3Request[];
  /** Holds every UploadPart request unanswered (a server that does not keep up) until `release`. */
  holdParts(): { release(): void; waiting(): number };
  /** Stops answering: open connections are cut, new ones refused. */
  stop(): Promise<void>;
  /** Answers again, on the same port and with the same objects. */
  start(): Promise<void>;
  close(): Promise<void>;
}

/** One request as s3rver saw it: the copy source for copies. */
export interface S3Request {
  method: string;
  path: string;
  query: Record<string, string | undefined>;
  copySource?: string;
}

interface KoaContext {
  method: string;
  path: string;
  query: Record<string, string | undefined>;
  headers: Record<string, string | undefined>;
  status: number;
  body: unknown;
  /** s3rver's filesystem store. */
  store: {
    getObject(bucket: string, key: string, range: { start: number; end: number }): Promise<{ content: NodeJS.ReadableStream | null } | null>;
    putPart(bucket: string, uploadId: string, partNumber: number, content: NodeJS.ReadableStream): Promise<{ md5: string }>;
  };
}

const UPLOADS = '._S3rver_uploads';

interface Gate {
  open: Promise<void> | null;
  waiting: number;
}

function multipartExtras(directory: string, gate: Gate, requests: S3Request[]) {
  return async (ctx: KoaContext, next: () => Promise<void>) => {
    const copySource = ctx.headers['x-amz-copy-source'];
    requests.push({ method: ctx.method, path: ctx.path, query: { ...ctx.query }, ...(copySource ? { copySource: decodeURIComponent(copySource) } : {}) });
    if (gate.open && ctx.method === 'PUT' && ctx.query.partNumber !== undefined) {
      gate.waiting++;
      await gate.open;
      gate.waiting--;
    }
    const [, bucket, ...rest] = ctx.path.split('/');
    const key = decodeURIComponent(rest.join('/'));
    if (!bucket) return next();
    const uploads = path.join(directory, bucket, UPLOADS);
    if (ctx.method === 'DELETE' && key !== '' && ctx.query.uploadId !== undefined) {
      const folder = path.join(uploads, path.basename(ctx.query.uploadId));
      const stored = await fs.readFile(path.join(folder, 'key'), 'utf8').catch(() => null);
      if (stored !== key) {
        ctx.status = 404;
        ctx.body = { Error: { Code: 'NoSuchUpload', Message: 'The specified upload does not exist.' } };
        return;
      }
      await fs.rm(folder, { recursive: true, force: true });
      ctx.status = 204;
      return;
    }
    if (ctx.method === 'PUT' && ctx.query.uploadId !== undefined && ctx.query.partNumber !== undefined && copySource) {
      const [sourceBucket = '', ...sourceKey] = decodeURIComponent(copySource).replace(/^\//, '').split('/');
      const range = /^bytes=(\d+)-(\d+)$/.exec(ctx.headers['x-amz-copy-source-range'] ?? '');
      const source = await ctx.store.getObject(sourceBucket, sourceKey.join('/'), range ? { start: Number(range[1]), end: Number(range[2]) } : { start: 0, end: Number.POSITIVE_INFINITY });
      if (!source?.content) {
        ctx.status = 404;
        ctx.body = { Error: { Code: 'NoSuchKey', Message: 'The specified key does not exist.' } };
        return;
      }
      const { md5 } = await ctx.store.putPart(bucket, path.basename(ctx.query.uploadId), Number(ctx.query.partNumber), source.content);
      ctx.body = { CopyPartResult: { LastModified: new Date().toISOString(), ETag: `"${md5}"` } };
      return;
    }
    if (ctx.method === 'GET' && key === '' && ctx.query.uploads !== undefined) {
      const prefix = ctx.query.prefix ?? '';
      const found: Array<{ Key: string; UploadId: string; Initiated: string }> = [];
      for (const id of await fs.readdir(uploads).catch(() => [] as string[])) {
        const stored = await fs.readFile(path.join(uploads, id, 'key'), 'utf8').catch(() => null);
        const stats = await fs.stat(path.join(uploads, id)).catch(() => null);
        if (stored === null || !stats || !stored.startsWith(prefix)) continue;
        found.push({ Key: stored, UploadId: id, Initiated: (stats.birthtimeMs > 0 ? stats.birthtime : stats.mtime).toISOString() });
      }
      found.sort((a, b) => a.Key.localeCompare(b.Key));
      ctx.body = { ListMultipartUploadsResult: { Bucket: bucket, Prefix: prefix, IsTruncated: false, ...(found.length ? { Upload: found } : {}) } };
      return;
    }
    return next();
  };
}

interface FilesystemStore {
  getResourcePath(bucket: string, key: string, resource: string): string;
  deleteObject(bucket: string, key: string): Promise<void>;
}

/**
 * s3rver removes a key's folders once a delete leaves them empty. That races a put under the
 * same prefix (a temp object written while another is deleted, `tmp/`): the put has just made
 * the folder, its file then fails to open (ENOENT) on a stream s3rver does not watch, and the
 * error is thrown in the test process. S3 has no folders: deletes here keep them.
 */
function keepFolders(store: FilesystemStore): void {
  store.deleteObject = async (bucket, key) => {
    await Promise.all(
      ['object', 'object.md5', 'metadata.json'].map((resource) =>
        fs.unlink(store.getResourcePath(bucket, key, resource)).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'ENOENT') throw error;
        }),
      ),
    );
  };
}

export async function startS3rver(): Promise<TestS3> {
  const directory = await makeTempDir('bantu-s3rver-');
  let port = 0;
  let server: S3rver | undefined;
  const gate: Gate = { open: null, waiting: 0 };
  const requests: S3Request[] = [];
  const start = async () => {
    const instance = new S3rver({ address: '127.0.0.1', port, directory, silent: true, vhostBuckets: false });
    keepFolders((instance as unknown as { store: FilesystemStore }).store);
    // Before s3rver's router (the last middleware), after its XML encoder.
    instance.middleware.splice(instance.middleware.length - 1, 0, multipartExtras(directory, gate, requests));
    const address = (await instance.run()) as AddressInfo;
    port = address.port;
    server = instance;
  };
  const stop = async () => {
    const running = server;
    server = undefined;
    if (!running) return;
    const http = (running as unknown as { httpServer: Server }).httpServer;
    const closed = running.close();
    http.closeAllConnections();
    await closed;
  };
  await start();
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    endpoint,
    directory,
    requests,
    client: (tuning) => createS3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, ...S3RVER_KEY }, tuning),
    env: (vars) => ({
      S3_ENDPOINT: endpoint,
      S3_ACCESS_KEY_ID: S3RVER_KEY.accessKeyId,
      S3_SECRET_ACCESS_KEY: S3RVER_KEY.secretAccessKey,
      ...Object.fromEntries(Object.entries(vars).filter((entry): entry is [string, string] => entry[1] !== undefined)),
    }),
    holdParts() {
      let release = () => {};
      gate.open = new Promise((resolve) => {
        release = () => {
          gate.open = null;
          resolve();
        };
      });
      return { release, waiting: () => gate.waiting };
    },
    stop,
    start,
    async close() {
      await stop();
      await fs.rm(directory, { recursive: true, force: true });
    },
  };
}

/** Every object key in a bucket, sorted. */
export async function objectKeys(client: S3Client, bucket: string): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
    for (const object of page.Contents ?? []) if (object.Key) keys.push(object.Key);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return keys.sort();
}

/** Multipart uploads in progress in a bucket (their keys). */
export async function multipartUploads(client: S3Client, bucket: string): Promise<string[]> {
  const page = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
  return (page.Uploads ?? []).map((upload) => upload.Key ?? '').sort();
}
