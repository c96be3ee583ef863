import http from 'node:http';
import https from 'node:https';
import { S3Client, S3ServiceException } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { AppError, Errors } from '../../core/errors.ts';

/**
 * The S3 client of the stores (src/adapters/blob/s3.ts) and how its failures are told apart:
 * the S3 service or the way to it failing is a 503 for the caller, anything else stays itself.
 */
/** Where an S3 service is and how to sign for it. Credentials are static: the SDK never walks its provider chain (no instance-metadata lookups). */
export interface S3Location {
  /** Unset: AWS S3 of `region`. */
  endpoint?: string;
  region: string;
  forcePathStyle: boolean;
  accessKeyId: string;
  secretAccessKey: string;
}

/** Retries and timeouts of every request; the defaults bound a dead server to about 3 * 30 s. */
export interface S3ClientTuning {
  /** Tries per request, the first included. Default 3. */
  maxAttempts?: number;
  /** Time to open a TCP connection. Default 3000 ms. */
  connectTimeoutMs?: number;
  /** Time from a request's start to its response headers (an upload part included). Default 30 s. */
  requestTimeoutMs?: number;
  /** Longest silence on a socket, a download's body included. Default 30 s. */
  socketTimeoutMs?: number;
}

export function createS3Client(location: S3Location, tuning: S3ClientTuning = {}): S3Client {
  const agent = { keepAlive: true, maxSockets: 64 };
  return new S3Client({
    endpoint: location.endpoint,
    region: location.region,
    forcePathStyle: location.forcePathStyle,
    credentials: { accessKeyId: location.accessKeyId, secretAccessKey: location.secretAccessKey },
    maxAttempts: tuning.maxAttempts ?? 3,
    retryMode: 'standard',
    // Checksums only where S3 requires them: the default (CRC32 on every upload, with
    // aws-chunked trailers) is not understood by every S3-compatible server.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: new NodeHttpHandler({
      connectionTimeout: tuning.connectTimeoutMs ?? 3000,
      requestTimeout: tuning.requestTimeoutMs ?? 30_000,
      throwOnRequestTimeout: true,
      socketTimeout: tuning.socketTimeoutMs ?? 30_000,
      httpAgent: new http.Agent(agent),
      httpsAgent: new https.Agent(agent),
    }),
  });
}

/** An error of the S3 service or of the way to it (network, timeout), as opposed to a bug here or a failing source. */
export function isS3Failure(error: unknown): boolean {
  if (error instanceof S3ServiceException) return true;
  if (!(error instanceof Error)) return false;
  const code = (error as NodeJS.ErrnoException).code;
  return '$metadata' in error || error.name === 'TimeoutError' || (typeof code === 'string' && /^E[A-Z_]+$/.test(code));
}

export function statusOf(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

/** An S3 failure in a few words: its code and message, or its HTTP status when the answer had no body (HEAD). */
export function reasonOf(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const status = statusOf(error);
  if (status !== undefined && (error.name === 'Unknown' || error.message === 'UnknownError' || error.message === '')) return `HTTP ${status}`;
  return error.name === 'Error' ? error.message : `${error.name}: ${error.message}`;
}

/** The service could not do what the request needs: 503 with Retry-After; the cause goes to the log, never to the client. */
export function unavailable(error: unknown): AppError {
  return new AppError(Errors.unavailable, 'A service this request needs is not answering. Try again shortly.', {
    headers: { 'Retry-After': '5' },
    cause: error,
  });
}

/** S3 failures become 503s; anything else (a bug) stays what it is. */
export function asStoreError(error: unknown): unknown {
  return error instanceof AppError || !isS3Failure(error) ? error : unavailable(error);
}
