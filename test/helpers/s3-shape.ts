import { randomBytes } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Environment } from '../../src/core/principal.ts';
import { startS3rver, type TestS3 } from './s3.ts';

/**
 * The S3 shape's storage (BANTU_TEST_SHAPE=s3): one s3rver for the test file, started with its
 * first server and stopped with its last, and buckets of their own for each server (another
 * process of the same installation shares them).
 */
export interface ServerS3 {
  /** The S3_* variables the server was started with (a CLI run on its data needs them too). */
  env: Record<string, string>;
  client: S3Client;
  buckets: { blobs: Record<Environment, string>; backups: Record<Environment, string> };
  /** Stops s3rver when no other server of the file uses it. */
  release(): Promise<void>;
}

let running: { s3: Promise<TestS3>; client: Promise<S3Client>; users: number } | undefined;

/** Storage in S3 for one server: new buckets, or those of `sameAs` (a process of the same installation). */
export async function acquireS3(sameAs?: ServerS3): Promise<ServerS3> {
  if (!running) {
    const s3 = startS3rver();
    running = { s3, client: s3.then((server) => server.client()), users: 0 };
  }
  const shared = running;
  shared.users++;
  try {
    const s3 = await shared.s3;
    const client = await shared.client;
    const suffix = randomBytes(4).toString('hex');
    const env = sameAs?.env ?? s3.env({ S3_BUCKET: `files-${suffix}`, S3_BACKUP_BUCKET: `backups-${suffix}` });
    const bucketsOf = (prefix: string) => ({ live: `${prefix}-live`, test: `${prefix}-test` });
    let released = false;
    return {
      env,
      client,
      buckets: { blobs: bucketsOf(env.S3_BUCKET as string), backups: bucketsOf(env.S3_BACKUP_BUCKET as string) },
      async release() {
        if (released) return;
        released = true;
        await releaseOne(shared);
      },
    };
  } catch (error) {
    await releaseOne(shared);
    throw error;
  }
}

async function releaseOne(shared: NonNullable<typeof running>): Promise<void> {
  shared.users--;
  if (shared.users > 0) return;
  if (running === shared) running = undefined;
  (await shared.client.catch(() => undefined))?.destroy();
  await (await shared.s3.catch(() => undefined))?.close();
}
