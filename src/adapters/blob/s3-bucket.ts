import { randomBytes } from 'node:crypto';
import { CreateBucketCommand, DeleteObjectCommand, HeadBucketCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { reasonOf, type S3Location, statusOf } from './s3-client.ts';

/**
 * Opening a store's bucket at start: created when it does not exist, then checked by writing
 * there (a probe object, put and deleted), so that credentials or permissions that cannot
 * serve fail the start with one line naming the bucket, rather than the first upload.
 */
/** The store could not open its bucket at start (wrong credentials, no permission, no server): the CLI says so in one line. */
export class S3UnusableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'S3UnusableError';
  }
}

/** Where probe objects go: the store's temp prefix, which its sweep owns. */
const PROBE_PREFIX = 'tmp/probe-';

/** Makes sure `bucket` exists and can be written with the client's credentials; `where` names the service in messages. */
export async function openBucket(client: S3Client, bucket: string, where?: string): Promise<void> {
  const named = `S3 bucket "${bucket}"${where ? ` at ${where}` : ''}`;
  const unusable = (what: string, error: unknown) => new S3UnusableError(`${named} ${what} (${reasonOf(error)})`, { cause: error });
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }));
  } catch (error) {
    if (statusOf(error) === 403) throw unusable('refuses these credentials: check S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY and the bucket policy', error);
    if (statusOf(error) !== 404) throw unusable('cannot be reached', error);
    try {
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
    } catch (createError) {
      // Another process may have created it meanwhile.
      const name = (createError as Error).name;
      if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw unusable('does not exist and cannot be created', createError);
    }
  }
  const probe = `${PROBE_PREFIX}${randomBytes(8).toString('hex')}`;
  try {
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: probe, Body: 'bantu' }));
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: probe }));
  } catch (error) {
    throw unusable('cannot be written with these credentials', error);
  }
}

/** Where a store's service is, for messages: the endpoint's origin (never user info), or AWS. */
export function whereOf(location: S3Location): string {
  if (!location.endpoint) return `AWS S3 (${location.region})`;
  try {
    return new URL(location.endpoint).origin;
  } catch {
    return 'S3_ENDPOINT';
  }
}

/** One S3 service (the same endpoint, or AWS region, and keys): its buckets can copy between them. */
export function serviceOf(location: S3Location): string {
  return JSON.stringify([location.endpoint ?? null, location.region, location.accessKeyId]);
}
