import {
  AbortMultipartUploadCommand,
  type CompletedPart,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  type S3Client,
  UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import type { Logger } from 'pino';

export interface PartCopy {
  /** Where the copy goes: `object` in `bucket`. */
  bucket: string;
  object: string;
  /** `<bucket>/<key>` of the source, on the same S3 service. */
  copySource: string;
  size: number;
  partSize: number;
  /** Parts copied at once. */
  queueSize: number;
  logger?: Pick<Logger, 'warn'>;
}

/**
 * A server-side copy too large for one request: a multipart upload whose parts are copied
 * from the source by S3 (UploadPartCopy of `partSize` byte ranges, `queueSize` at once), so
 * that no single request copies gigabytes against the request timeout and no byte passes
 * through this process. A failed copy is aborted in the background, as a failed upload is
 * (S3 failing would only hold the caller; the store's sweep is the backstop).
 */
export async function copyInParts(client: S3Client, copy: PartCopy): Promise<void> {
  const { bucket, object, copySource, size, partSize } = copy;
  let uploadId: string | undefined;
  try {
    uploadId = (await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: object }))).UploadId;
    const parts: CompletedPart[] = [];
    const count = Math.ceil(size / partSize);
    let next = 0;
    const lane = async () => {
      while (next < count) {
        const index = next++;
        const start = index * partSize;
        const end = Math.min(size, start + partSize) - 1;
        const answer = await client.send(
          new UploadPartCopyCommand({ Bucket: bucket, Key: object, UploadId: uploadId, PartNumber: index + 1, CopySource: copySource, CopySourceRange: `bytes=${start}-${end}` }),
        );
        parts[index] = { PartNumber: index + 1, ETag: answer.CopyPartResult?.ETag };
      }
    };
    await Promise.all(Array.from({ length: Math.min(copy.queueSize, count) }, lane));
    await client.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: object, UploadId: uploadId, MultipartUpload: { Parts: parts } }));
  } catch (error) {
    if (uploadId) {
      void client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: object, UploadId: uploadId })).catch((abortError: unknown) => {
        copy.logger?.warn({ err: abortError, bucket, key: object, upload_id: uploadId }, 'could not abort a failed copy; the sweep will');
      });
    }
    throw error;
  }
}
