import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { dropDatabases } from '../src/adapters/db/pg.ts';
import { isProcessAlive } from '../src/adapters/local/data-dir.ts';
import { sha256, until } from './helpers/files.ts';
import { multipartUploads, objectKeys } from './helpers/s3.ts';
import { acquireS3, type ServerS3 } from './helpers/s3-shape.ts';
import { makeTempDir } from './helpers/server.ts';
import { inProcessOnly, s3 } from './helpers/shape.ts';

/**
 * kill -9 of a real `bantu start` while uploads are in flight, then a restart on the same
 * data dir: every upload that got a 2xx is there, intact; every visible file is whole and is
 * one whose body the client had sent completely; nothing half-sent is visible; temp files and
 * the orphaned embedded PostgreSQL are cleaned up by the restart.
 *
 * In the S3 shape the files go to S3: an upload in flight shows there only as a multipart
 * upload (a body over one 8 MiB part), and what the killed process left is not removed by the
 * restart, by design: the store sweeps temp objects only after a 24 h grace, since another
 * process may be writing them (the sweep has its own tests in src/adapters/blob/s3.test.ts).
 */
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address() as net.AddressInfo;
      server.close(() => resolve(address.port));
    });
  });
}


interface Attempt {
  name: string;
  sha256: string;
  bodySent: boolean;
  status?: number;
}

describe('files survive kill -9', { skip: inProcessOnly('kills bantu start, the one-process shape (test/machine/distributed.test.ts kills a files instance)') }, () => {
  const dirs: string[] = [];
  const children: ChildProcess[] = [];
  let databaseUrl: string | undefined;
  let storage: ServerS3 | undefined;
  after(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    if (databaseUrl) await dropDatabases(databaseUrl).catch(() => undefined);
    for (const dir of dirs) await fs.rm(dir, { recursive: true, force: true });
    await storage?.release();
  });

  it('keeps every acknowledged upload and shows no partial one after a crash and a restart', async () => {
    const dataDir = await makeTempDir('bantu-crash-');
    dirs.push(dataDir);
    if (s3) storage = await acquireS3();
    /** Uploads in flight or left behind: temp files, or in S3 temp objects and multipart uploads. */
    const temps = async (): Promise<string[]> => {
      if (!storage) return fs.readdir(path.join(dataDir, 'blobs', 'test', 'tmp'));
      const bucket = storage.buckets.blobs.test;
      const keys = [...(await objectKeys(storage.client, bucket)), ...(await multipartUploads(storage.client, bucket))];
      return keys.filter((key) => key.startsWith('tmp/') && !key.startsWith('tmp/probe-'));
    };
    const port = await freePort();
    if (process.env.BANTU_TEST_DATABASE_URL) {
      const url = new URL(process.env.BANTU_TEST_DATABASE_URL);
      url.pathname = `/bantu_crash_${randomBytes(5).toString('hex')}`;
      databaseUrl = url.toString();
    }
    let output = '';
    const start = async (): Promise<ChildProcess> => {
      const child = spawn(process.execPath, [path.join(root, 'bin', 'bantu.js'), 'start'], {
        cwd: root,
        env: { ...process.env, BANTU_DATA_DIR: dataDir, BANTU_PORT: String(port), BANTU_LOG_LEVEL: 'warn', ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}), ...storage?.env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      child.stdout?.on('data', (chunk) => (output += chunk));
      child.stderr?.on('data', (chunk) => (output += chunk));
      await until(async () => {
        if (child.exitCode !== null) throw new Error(`bantu exited during start:\n${output}`);
        return (await get('/healthz').catch(() => null))?.status === 200;
      }, 'bantu to start', 120_000);
      return child;
    };
    let ca = '';
    const get = async (pathname: string, key?: string): Promise<{ status: number; body: Buffer }> => {
      ca ||= await fs.readFile(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
      return new Promise((resolve, reject) => {
        const request = https.get(`https://127.0.0.1:${port}${pathname}`, { ca, agent: false, headers: key ? { authorization: `Bearer ${key}` } : {} }, (response) => {
          const chunks: Buffer[] = [];
          response.on('data', (c: Buffer) => chunks.push(c));
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks) }));
          response.on('error', reject);
        });
        request.on('error', reject);
      });
    };
    const upload = (key: string, attempt: Attempt, content: Buffer, holdAfter?: number): Promise<void> =>
      new Promise((resolve) => {
        const request = https.request(`https://127.0.0.1:${port}/v1/files?name=${attempt.name}`, {
          method: 'POST',
          ca,
          agent: false,
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/octet-stream', 'content-length': content.length },
        });
        request.on('response', (response) => {
          attempt.status = response.statusCode;
          response.resume();
          response.on('end', resolve);
          response.on('error', () => resolve());
        });
        request.on('error', () => resolve());
        // 'finish': every byte of the body was handed to the kernel.
        request.on('finish', () => (attempt.bodySent = true));
        if (holdAfter === undefined) request.end(content);
        else request.write(content.subarray(0, holdAfter)); // and never the rest
      });

    let child = await start();
    const keys = JSON.parse(await fs.readFile(path.join(dataDir, 'secrets', 'default-tenant.json'), 'utf8')).keys;
    const key: string = keys.test.account_key;

    const attempts: Attempt[] = [];
    const contents = new Map<string, Buffer>();
    const partial: Attempt = { name: 'partial.bin', sha256: '', bodySent: false };
    // In S3, more than one part (8 MiB) before the hold, so that it is a multipart upload in flight.
    const partialContent = randomBytes((storage ? 16 : 4) * 1024 * 1024);
    partial.sha256 = sha256(partialContent);
    attempts.push(partial);
    void upload(key, partial, partialContent, (storage ? 9 : 1) * 1024 * 1024);

    let killed = false;
    const worker = async (w: number) => {
      for (let i = 0; !killed; i++) {
        const content = randomBytes(1024 + Math.floor(Math.random() * 2 * 1024 * 1024));
        const attempt: Attempt = { name: `w${w}-${i}.bin`, sha256: sha256(content), bodySent: false };
        attempts.push(attempt);
        contents.set(attempt.name, content);
        await upload(key, attempt, content);
      }
    };
    const workers = Array.from({ length: 6 }, (_, w) => worker(w));
    await until(() => attempts.filter((a) => a.status === 201).length >= 20, '20 acknowledged uploads', 120_000);
    await until(async () => (await temps()).length > 0, 'an upload in flight');
    const pgPid = databaseUrl
      ? null
      : Number.parseInt((await fs.readFile(path.join(dataDir, 'postgres', 'postmaster.pid'), 'utf8')).split('\n')[0] ?? '', 10);
    child.kill('SIGKILL');
    killed = true;
    await new Promise((resolve) => child.once('exit', resolve));
    await Promise.all(workers);
    if (pgPid) assert.ok(isProcessAlive(pgPid), 'kill -9 left the embedded PostgreSQL running (the case the restart must handle)');

    child = await start();
    if (pgPid) assert.ok(!isProcessAlive(pgPid), 'the restart stopped the orphaned PostgreSQL');
    if (!storage) assert.deepEqual(await temps(), [], 'the restart removed orphan temp files');

    const visible = new Map<string, { id: string; sha256: string; size: number }>();
    let cursor: string | null = null;
    do {
      const page = JSON.parse((await get(`/v1/files?limit=200${cursor ? `&cursor=${cursor}` : ''}`, key)).body.toString());
      for (const file of page.data) visible.set(file.name, file);
      cursor = page.next_cursor;
    } while (cursor);

    const acknowledged = attempts.filter((a) => a.status === 201);
    assert.ok(acknowledged.length >= 20);
    for (const attempt of acknowledged) {
      const file = visible.get(attempt.name);
      assert.ok(file, `acknowledged upload ${attempt.name} is visible`);
      assert.equal(file.sha256, attempt.sha256);
    }
    const byName = new Map(attempts.map((a) => [a.name, a]));
    for (const [name, file] of visible) {
      const attempt = byName.get(name);
      assert.ok(attempt, `${name} was uploaded by this test`);
      assert.ok(attempt.bodySent, `${name} is visible although its body was not sent completely`);
      assert.equal(file.sha256, attempt.sha256);
      const content = await get(`/v1/files/${file.id}/content`, key);
      assert.equal(content.status, 200);
      assert.equal(sha256(content.body), attempt.sha256, `${name} is intact`);
    }
    assert.ok(!visible.has('partial.bin'), 'the half-sent upload is not visible');

    child.kill('SIGTERM');
    const code = await new Promise((resolve) => child.once('exit', (c) => resolve(c)));
    assert.equal(code, 0, output);
  });
});
