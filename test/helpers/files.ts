import { createHash, randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import type { TestResponse, TestServer } from './server.ts';

/** Small factories for the files end-to-end tests. */
export const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

/** Anything the tests can send requests to: an in-process server or a distributed deployment. */
export type Client = Pick<TestServer, 'request'>;

export function uploadRaw(
  server: Client,
  key: string,
  content: Buffer | string,
  options: { name?: string; path?: string; contentType?: string; headers?: Record<string, string>; query?: string } = {},
): Promise<TestResponse> {
  const params = new URLSearchParams();
  if (options.name !== undefined) params.set('name', options.name);
  if (options.path !== undefined) params.set('path', options.path);
  const query = [params.toString(), options.query].filter(Boolean).join('&');
  return server.request('POST', `/v1/files${query ? `?${query}` : ''}`, {
    auth: key,
    body: content,
    headers: { 'content-type': options.contentType ?? 'application/octet-stream', ...options.headers },
  });
}

/** A multipart/form-data body: fields first (in order), then the file part unless `file` is omitted. */
export function multipartBody(
  fields: Record<string, string>,
  file?: { content: Buffer | string; filename?: string; contentType?: string; field?: string },
): { body: Buffer; contentType: string } {
  const boundary = `----bantu${randomBytes(8).toString('hex')}`;
  const chunks: Buffer[] = [];
  for (const [name, value] of Object.entries(fields)) {
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`));
  }
  if (file) {
    const filename = file.filename === undefined ? '' : `; filename="${file.filename}"`;
    chunks.push(
      Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="${file.field ?? 'file'}"${filename}\r\nContent-Type: ${file.contentType ?? 'application/octet-stream'}\r\n\r\n`,
      ),
      Buffer.from(file.content),
      Buffer.from('\r\n'),
    );
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), contentType: `multipart/form-data; boundary=${boundary}` };
}

export async function createTenant(server: TestServer, name: string): Promise<{ live: { account_key: string; application_key: string }; test: { account_key: string; application_key: string } }> {
  const response = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name } });
  if (response.status !== 201) throw new Error(`tenant creation failed: ${response.status} ${response.text}`);
  return response.json.keys;
}

/** Events the files service appended for one file, in delivery order. */
export async function eventsOf(server: TestServer, fileId: string, environment: 'live' | 'test' = 'test') {
  const result = await sql<{ type: string; data: { file: Record<string, unknown> }; owner_id: string | null; tenant_id: string }>`
    select type, data, owner_id, tenant_id from bus.outbox where data->'file'->>'id' = ${fileId} order by xid, id`.execute(
    server.app.databases.environments[environment],
  );
  return result.rows;
}

/** Files under the blob store's temp folder: uploads in flight or left behind (in S3: temp objects and multipart uploads). */
export async function tempFiles(server: TestServer, environment: 'live' | 'test' = 'test'): Promise<string[]> {
  if (server.s3) {
    const { multipartUploads, objectKeys } = await import('./s3.ts');
    const bucket = server.s3.buckets.blobs[environment];
    const keys = [...(await objectKeys(server.s3.client, bucket)), ...(await multipartUploads(server.s3.client, bucket))];
    return [...new Set(keys.filter((key) => key.startsWith('tmp/')))].sort();
  }
  const fs = await import('node:fs/promises');
  const path = await import('node:path');
  return fs.readdir(path.join(server.dataDir, 'blobs', environment, 'tmp'));
}

/** How many blobs the environment's store holds. */
export async function blobCount(server: TestServer, environment: 'live' | 'test' = 'test'): Promise<number> {
  if (server.s3) {
    const { objectKeys } = await import('./s3.ts');
    return (await objectKeys(server.s3.client, server.s3.buckets.blobs[environment])).filter((key) => !key.startsWith('tmp/')).length;
  }
  const fs = await import('node:fs/promises');
  const path = await import('node:path');
  const root = path.join(server.dataDir, 'blobs', environment);
  let count = 0;
  for (const folder of await fs.readdir(root)) {
    if (folder === 'tmp') continue;
    count += (await fs.readdir(path.join(root, folder))).length;
  }
  return count;
}

/** Whether the backup store holds a blob, wherever the server keeps backups (its data dir, or S3). */
export async function backupBlobExists(server: TestServer, environment: 'live' | 'test', sha: string): Promise<boolean> {
  if (server.s3) {
    const { objectKeys } = await import('./s3.ts');
    return (await objectKeys(server.s3.client, server.s3.buckets.backups[environment])).includes(`${sha.slice(0, 2)}/${sha}`);
  }
  const fs = await import('node:fs/promises');
  const path = await import('node:path');
  return fs.stat(path.join(server.dataDir, 'backups', environment, sha.slice(0, 2), sha)).then(
    () => true,
    () => false,
  );
}

/** Flips one bit of the byte at `index` of a backup blob, in place (bit rot), wherever it is kept. */
export async function rotBackupBlob(server: TestServer, environment: 'live' | 'test', sha: string, index: number): Promise<void> {
  const flip = (bytes: Buffer) => {
    bytes[index] = (bytes[index] as number) ^ 0x01;
    return bytes;
  };
  if (server.s3) {
    const { GetObjectCommand, PutObjectCommand } = await import('@aws-sdk/client-s3');
    const target = { Bucket: server.s3.buckets.backups[environment], Key: `${sha.slice(0, 2)}/${sha}` };
    const object = await server.s3.client.send(new GetObjectCommand(target));
    const bytes = Buffer.from((await object.Body?.transformToByteArray()) ?? []);
    await server.s3.client.send(new PutObjectCommand({ ...target, Body: flip(bytes) }));
    return;
  }
  const fs = await import('node:fs/promises');
  const path = await import('node:path');
  const blob = path.join(server.dataDir, 'backups', environment, sha.slice(0, 2), sha);
  const bytes = await fs.readFile(blob);
  await fs.chmod(blob, 0o600);
  await fs.writeFile(blob, flip(bytes));
}

/**
 * A hand-driven HTTPS upload: sends the headers, then `write` decides how much body to send.
 * Resolves with the response (status and parsed body) as soon as one arrives, even mid-body.
 */
export async function streamUpload(
  server: TestServer,
  options: {
    method?: string;
    path: string;
    /** Sent as Bearer; omitted: no credentials. */
    key?: string;
    headers: Record<string, string | number>;
    write: (request: import('node:http').ClientRequest) => Promise<void>;
  },
): Promise<{ status: number; json: TestResponse['json']; headers: import('node:http').IncomingHttpHeaders }> {
  const https = await import('node:https');
  const url = new URL(options.path, server.url);
  return new Promise((resolve, reject) => {
    const request = https.request(url, {
      method: options.method ?? 'POST',
      ca: server.ca,
      agent: false,
      headers: { ...(options.key ? { authorization: `Bearer ${options.key}` } : {}), ...options.headers },
    });
    let answered = false;
    request.on('response', (response) => {
      answered = true;
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let json: unknown;
        try {
          json = text ? JSON.parse(text) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ status: response.statusCode ?? 0, json, headers: response.headers });
        request.destroy();
      });
    });
    // Writing after the server answered and closed may fail: the answer is what counts.
    request.on('error', (error) => {
      if (!answered) reject(error);
    });
    request.flushHeaders();
    options.write(request).catch(() => undefined);
  });
}

/** Writes `total` random bytes in chunks, waiting for drain; stops when the request is destroyed. */
export async function writeChunks(request: import('node:http').ClientRequest, total: number, chunk = 64 * 1024, end = true): Promise<void> {
  let sent = 0;
  while (sent < total && !request.destroyed) {
    const size = Math.min(chunk, total - sent);
    sent += size;
    if (!request.write(randomBytes(size))) await new Promise((resolve) => request.once('drain', resolve));
  }
  if (end && !request.destroyed) request.end();
}

/** Polls until `condition` holds (a wait, not a timing assertion: the limit only stops a hung test). */
export async function until(condition: () => boolean | Promise<boolean>, what: string, limitMs = 60_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Waits until the backup has recorded at least `entries` history entries of the caller's tenant
 * and environment and has nothing pending; returns `GET /v1/backups/status` then.
 */
// 3 minutes: a worker that takes over a JetStream consumer first waits out its ack wait (30 s), on a loaded machine too.
export async function backedUp(server: Client, key: string, entries: number, limitMs = 180_000): Promise<{ pending_events: number; versions: number; bytes: number }> {
  let status: { pending_events: number; versions: number; bytes: number } | undefined;
  await until(
    async () => {
      const response = await server.request('GET', '/v1/backups/status', { auth: key });
      if (response.status !== 200) throw new Error(`backup status: ${response.status} ${response.text}`);
      status = response.json;
      return response.json.pending_events === 0 && response.json.versions >= entries;
    },
    `${entries} backed-up entries`,
    limitMs,
  );
  return status as { pending_events: number; versions: number; bytes: number };
}
