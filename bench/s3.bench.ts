import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CreateBucketCommand, GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { createS3Client } from '../src/adapters/blob/s3-client.ts';
import { S3RVER_KEY } from '../test/helpers/s3.ts';
import { startServer, type TestServer } from '../test/helpers/server.ts';
import { type BenchPair, definePair, mibPerSecond } from './harness.ts';
import { receive, send, stopChild } from './lib/transfer.ts';

/**
 * Files in S3 (issue 16): a 100 MiB upload and download through Bantu with S3_BUCKET on
 * s3rver (A), against the same transfer made with the AWS SDK alone to the same s3rver in the
 * same run (B): lib-storage's Upload with the driver's part size and parallelism (8 MiB, 3 at
 * once), and a streamed GetObject. s3rver runs in a process of its own (bench/lib/s3rver-process.ts),
 * as an S3 service would; Bantu and the client live in this process, as does the SDK of B. A pays for what B does not: HTTPS to Bantu, hashing, the
 * database row and event, and the server-side copy of the temp object to its content address.
 * The backup worker is off: its copy of each upload to the backup bucket would run during the
 * next measurement.
 */
const MiB = 1024 * 1024;
const BIG = Number(process.env.BENCH_S3_MIB ?? 100) * MiB;
/** Transfers of BIG bytes per measurement, one after the other, as in bench/files.bench.ts. */
const TRANSFERS = Number(process.env.BENCH_S3_TRANSFERS ?? 3);
const PART = 8 * MiB;
const QUEUE = 3;
const SDK_BUCKET = 'bench-sdk';

interface Ctx {
  s3: { child: ChildProcess; directory: string };
  client: S3Client;
  bantu: TestServer;
  key: string;
  ca: string;
  chunk: Buffer;
  bigSha256: string;
  seq: number;
  /** A stored file of BIG bytes, for downloads. */
  bigId?: string;
  /** The bare HTTPS relay of the relay pair: GetObject piped to the answer. */
  relay?: { server: https.Server; url: string };
}

/** s3rver in a child process, and its endpoint. */
async function startS3Process(): Promise<{ child: ChildProcess; endpoint: string; directory: string }> {
  const script = path.join(import.meta.dirname, 'lib', 's3rver-process.ts');
  const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout?.once('data', (chunk) => resolve(String(chunk).trim()));
    child.once('exit', (code) => reject(new Error(`s3rver exited with ${code}`)));
  });
  const [endpoint = '', directory = ''] = line.split(' ');
  return { child, endpoint, directory };
}

async function stopS3(s3: Ctx['s3']): Promise<void> {
  await stopChild(s3.child);
  await fs.rm(s3.directory, { recursive: true, force: true });
}

async function setup(): Promise<Ctx> {
  const { endpoint, ...s3 } = await startS3Process();
  const client = createS3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, ...S3RVER_KEY });
  try {
    await client.send(new CreateBucketCommand({ Bucket: SDK_BUCKET }));
    const env = { S3_ENDPOINT: endpoint, S3_ACCESS_KEY_ID: S3RVER_KEY.accessKeyId, S3_SECRET_ACCESS_KEY: S3RVER_KEY.secretAccessKey, S3_BUCKET: 'bench-files' };
    const bantu = await startServer({ ...env, BANTU_LOG_LEVEL: 'silent', BANTU_BACKUP_WORKER: 'off' });
    const chunk = randomBytes(MiB);
    const hash = createHash('sha256');
    for (let sent = 0; sent < BIG; sent += MiB) hash.update(chunk.subarray(0, Math.min(MiB, BIG - sent)));
    return { s3, client, bantu, key: bantu.keys.test.account_key, ca: bantu.ca, chunk, bigSha256: hash.digest('hex'), seq: 0 };
  } catch (error) {
    client.destroy();
    await stopS3(s3);
    throw error;
  }
}

async function teardown(ctx: Ctx): Promise<void> {
  await ctx.bantu.close();
  ctx.client.destroy();
  await stopS3(ctx.s3);
}

/** BIG bytes: the same random MiB over and over, as the HTTPS client sends them to Bantu. */
async function* bigBody(chunk: Buffer): AsyncIterable<Buffer> {
  for (let sent = 0; sent < BIG; sent += chunk.length) yield chunk.subarray(0, Math.min(chunk.length, BIG - sent));
}

async function rateOf(transfer: () => Promise<number>): Promise<number> {
  let ms = 0;
  for (let i = 0; i < TRANSFERS; i++) ms += await transfer();
  return mibPerSecond(BIG * TRANSFERS, ms);
}

async function bantuUpload(ctx: Ctx): Promise<number> {
  const started = performance.now();
  const result = await send(ctx, 'POST', `${ctx.bantu.url}/v1/files?name=s3-bench-${ctx.seq++}.bin`, BIG, { auth: ctx.key });
  const ms = performance.now() - started;
  if (result.status !== 201) throw new Error(`upload failed: ${result.status} ${result.body}`);
  const file = JSON.parse(result.body);
  if (file.size !== BIG || file.sha256 !== ctx.bigSha256) throw new Error(`bantu stored other bytes: ${result.body}`);
  return ms;
}

async function sdkUpload(ctx: Ctx): Promise<number> {
  const started = performance.now();
  const upload = new Upload({
    client: ctx.client,
    params: { Bucket: SDK_BUCKET, Key: `sdk-${ctx.seq++}.bin`, Body: Readable.from(bigBody(ctx.chunk), { highWaterMark: 1 }) },
    partSize: PART,
    queueSize: QUEUE,
  });
  await upload.done();
  return performance.now() - started;
}

async function bantuDownload(ctx: Ctx): Promise<number> {
  const started = performance.now();
  const size = await receive(ctx, `${ctx.bantu.url}/v1/files/${ctx.bigId}/content`, ctx.key);
  if (size !== BIG) throw new Error(`short download: ${size}`);
  return performance.now() - started;
}

/**
 * A bare HTTPS server on Bantu's certificate that answers every GET with GetObject of the SDK's
 * copy piped to the response: the least a server in this process can do to serve S3 content
 * over HTTPS to the client in this process.
 */
async function startRelay(ctx: Ctx): Promise<{ server: https.Server; url: string }> {
  const [cert, key] = await Promise.all(['cert.pem', 'key.pem'].map((name) => fs.readFile(path.join(ctx.bantu.dataDir, 'tls', name), 'utf8')));
  const server = https.createServer({ cert, key }, (_request, response) => {
    ctx.client
      .send(new GetObjectCommand({ Bucket: SDK_BUCKET, Key: 'big.bin' }))
      .then((answer) => {
        response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(answer.ContentLength) });
        return pipeline(answer.Body as Readable, response);
      })
      .catch(() => response.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `https://localhost:${(server.address() as AddressInfo).port}/big.bin` };
}

async function relayDownload(ctx: Ctx): Promise<number> {
  const started = performance.now();
  const size = await receive(ctx, (ctx.relay as { url: string }).url);
  if (size !== BIG) throw new Error(`short relay download: ${size}`);
  return performance.now() - started;
}

async function sdkDownload(ctx: Ctx): Promise<number> {
  const started = performance.now();
  const answer = await ctx.client.send(new GetObjectCommand({ Bucket: SDK_BUCKET, Key: 'big.bin' }));
  let size = 0;
  for await (const chunk of answer.Body as Readable) size += (chunk as Buffer).length;
  if (size !== BIG) throw new Error(`short SDK download: ${size}`);
  return performance.now() - started;
}

export const pairs: BenchPair[] = [
  definePair<Ctx>({
    name: 's3/upload-100mib',
    description: `POST /v1/files of ${BIG / MiB} MiB raw body with files in S3 (s3rver; hashed, copied to its content address, recorded with its event), ${TRANSFERS} one after the other per measurement, vs the SDK's Upload of the same bytes to the same s3rver (8 MiB parts, 3 at once)`,
    labels: { a: 'bantu upload (S3)', b: 'SDK upload' },
    unit: 'MiB/s',
    higherIsBetter: true,
    target: { ratio: 0.6, description: 'an upload through Bantu to S3 keeps at least 60% of the SDK alone to the same server (issue 16)' },
    rounds: 5,
    warmup: 1,
    setup,
    teardown,
    a: (ctx) => rateOf(() => bantuUpload(ctx)),
    b: (ctx) => rateOf(() => sdkUpload(ctx)),
  }),
  definePair<Ctx>({
    name: 's3/download-100mib',
    description: `GET /v1/files/{id}/content of ${BIG / MiB} MiB with files in S3 (s3rver), ${TRANSFERS} one after the other per measurement, vs the SDK's GetObject of the same bytes from the same s3rver`,
    labels: { a: 'bantu download (S3)', b: 'SDK GetObject' },
    unit: 'MiB/s',
    higherIsBetter: true,
    target: { ratio: 0.8, description: 'a download through Bantu from S3 keeps at least 80% of the SDK alone from the same server (issue 16)' },
    rounds: 5,
    warmup: 1,
    setup: downloadSetup,
    teardown,
    a: (ctx) => rateOf(() => bantuDownload(ctx)),
    b: (ctx) => rateOf(() => sdkDownload(ctx)),
  }),
  definePair<Ctx>({
    name: 's3/download-100mib-relay',
    description: `the same download through Bantu against a bare HTTPS server (same certificate, same client) piping the SDK's GetObject of the same bytes to its answer`,
    labels: { a: 'bantu download (S3)', b: 'bare HTTPS relay of GetObject' },
    unit: 'MiB/s',
    higherIsBetter: true,
    rounds: 5,
    warmup: 1,
    async setup() {
      const ctx = await downloadSetup();
      ctx.relay = await startRelay(ctx);
      return ctx;
    },
    async teardown(ctx) {
      ctx.relay?.server.closeAllConnections();
      await new Promise((resolve) => ctx.relay?.server.close(resolve));
      await teardown(ctx);
    },
    a: (ctx) => rateOf(() => bantuDownload(ctx)),
    b: (ctx) => rateOf(() => relayDownload(ctx)),
  }),
];

/** A stored BIG file in Bantu and the same bytes in the SDK's bucket, for the download pairs. */
async function downloadSetup(): Promise<Ctx> {
  const ctx = await setup();
  try {
    const created = await send(ctx, 'POST', `${ctx.bantu.url}/v1/files?name=big.bin`, BIG, { auth: ctx.key });
    if (created.status !== 201) throw new Error(`upload failed: ${created.status} ${created.body}`);
    ctx.bigId = JSON.parse(created.body).id;
    await new Upload({
      client: ctx.client,
      params: { Bucket: SDK_BUCKET, Key: 'big.bin', Body: Readable.from(bigBody(ctx.chunk), { highWaterMark: 1 }) },
      partSize: PART,
      queueSize: QUEUE,
    }).done();
    return ctx;
  } catch (error) {
    await teardown(ctx);
    throw error;
  }
}
