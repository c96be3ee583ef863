import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Agent } from 'undici';
import { dropDatabases } from '../src/adapters/db/pg.ts';
import { sha256, until } from './helpers/files.ts';
import { makeTempDir, requestWith } from './helpers/server.ts';
import { inProcessOnly } from './helpers/shape.ts';
import { readZip } from './helpers/zip.ts';

/**
 * kill -9 of a real `bantu start` while a zip export runs, then a restart on the same data dir:
 * the export ends `ready` with a correct zip (or `failed` with a reason, and can be asked for
 * again), never `ready` and wrong.
 */
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FILES = 160;
const SIZE = 1024 * 1024;

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

describe('zip exports survive kill -9', { skip: inProcessOnly('kills bantu start, the one-process shape') }, () => {
  const dirs: string[] = [];
  const children: ChildProcess[] = [];
  const agents: Agent[] = [];
  let databaseUrl: string | undefined;
  after(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    for (const agent of agents) await agent.close();
    if (databaseUrl) await dropDatabases(databaseUrl).catch(() => undefined);
    for (const dir of dirs) await fs.rm(dir, { recursive: true, force: true });
  });

  it('finishes the export after the restart with a correct zip', async () => {
    const dataDir = await makeTempDir('bantu-export-crash-');
    dirs.push(dataDir);
    const port = await freePort();
    if (process.env.BANTU_TEST_DATABASE_URL) {
      const url = new URL(process.env.BANTU_TEST_DATABASE_URL);
      url.pathname = `/bantu_xcrash_${randomBytes(5).toString('hex')}`;
      databaseUrl = url.toString();
    }
    let output = '';
    let http: Agent | undefined;
    const base = `https://127.0.0.1:${port}`;
    const call = async (method: string, pathname: string, options: Parameters<typeof requestWith>[4] = {}) => {
      http ??= new Agent({ connect: { ca: await fs.readFile(path.join(dataDir, 'tls', 'cert.pem'), 'utf8') }, keepAliveTimeout: 1000 });
      if (!agents.includes(http)) agents.push(http);
      return requestWith(http, base, method, pathname, options);
    };
    const start = async (): Promise<ChildProcess> => {
      const child = spawn(process.execPath, [path.join(root, 'bin', 'bantu.js'), 'start'], {
        cwd: root,
        env: { ...process.env, BANTU_DATA_DIR: dataDir, BANTU_PORT: String(port), BANTU_LOG_LEVEL: 'warn', ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}) },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      child.stdout?.on('data', (chunk) => (output += chunk));
      child.stderr?.on('data', (chunk) => (output += chunk));
      await until(async () => {
        if (child.exitCode !== null) throw new Error(`bantu exited during start:\n${output}`);
        return (await call('GET', '/healthz').catch(() => null))?.status === 200;
      }, 'bantu to start', 120_000);
      return child;
    };

    let child = await start();
    const key: string = JSON.parse(await fs.readFile(path.join(dataDir, 'secrets', 'default-tenant.json'), 'utf8')).keys.test.account_key;
    const uploaded = new Map<string, string>();
    for (let i = 0; i < FILES; i++) {
      const content = randomBytes(SIZE);
      const response = await call('POST', `/v1/files?name=f${i}.bin&path=/bulk`, { auth: key, body: content, headers: { 'content-type': 'application/octet-stream' } });
      assert.equal(response.status, 201, response.text);
      uploaded.set(response.json.id, sha256(content));
    }

    const created = await call('POST', '/v1/exports', { auth: key, json: { email: 'ops@example.com' } });
    assert.equal(created.status, 202, created.text);
    const id = created.json.id;
    // Killed while it runs: some files written, not all.
    let seen: { status: string; files_done: number; files_total: number | null } = { status: 'pending', files_done: 0, files_total: null };
    await until(async () => {
      seen = (await call('GET', `/v1/exports/${id}`, { auth: key })).json;
      if (seen.status === 'ready') throw new Error('the export finished before the test could interrupt it');
      return seen.status === 'running' && seen.files_done > 0;
    }, 'the export to be running with progress');
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));
    assert.equal(seen.files_total, FILES);
    assert.ok(seen.files_done < FILES, `interrupted at ${seen.files_done} of ${FILES}`);

    child = await start();
    let finished: { status: string; error: string | null } = { status: 'running', error: null };
    await until(async () => {
      finished = (await call('GET', `/v1/exports/${id}`, { auth: key })).json;
      return ['ready', 'failed'].includes(finished.status);
    }, 'the export to finish after the restart', 180_000);
    console.log(`export interrupted at ${seen.files_done} of ${FILES} files; after the restart: ${finished.status}`);
    if (finished.status === 'failed') {
      assert.ok(finished.error, 'a failed export says why');
      const again = await call('POST', '/v1/exports', { auth: key, json: { email: 'ops@example.com' } });
      assert.equal(again.status, 202, 'and can be asked for again');
      return;
    }
    assert.equal(finished.status, 'ready');
    const zip = await call('GET', `/v1/exports/${id}/download`, { auth: key });
    assert.equal(zip.status, 200);
    // requestWith reads text; fetch the bytes again as a buffer.
    const bytes = await new Promise<Buffer>((resolve, reject) => {
      void (http as Agent)
        .request({ origin: base, path: `/v1/exports/${id}/download`, method: 'GET', headers: { authorization: `Bearer ${key}` } })
        .then(async (response) => resolve(Buffer.from(await response.body.arrayBuffer())), reject);
    });
    const entries = await readZip(bytes);
    const manifest = JSON.parse(entries.find((e) => e.name === 'manifest.json')?.data.toString('utf8') ?? 'null');
    assert.equal(manifest.files.length, FILES);
    const byName = new Map(entries.map((e) => [e.name, e.data]));
    for (const file of manifest.files) {
      assert.equal(file.sha256, uploaded.get(file.id));
      assert.equal(sha256(byName.get(file.entry) as Buffer), file.sha256, `${file.entry} is whole and right`);
    }
    assert.equal(entries.length, FILES + 1);
    child.kill('SIGTERM');
    assert.equal(await new Promise((resolve) => child.once('exit', (code) => resolve(code))), 0, output);
  });
});
