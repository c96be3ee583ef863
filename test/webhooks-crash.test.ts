import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { Agent, request } from 'undici';
import { dropDatabases } from '../src/adapters/db/pg.ts';
import { type CliProcess, runCli } from './helpers/cli.ts';
import { until } from './helpers/files.ts';
import { makeTempDir } from './helpers/server.ts';
import { inProcessOnly } from './helpers/shape.ts';
import { type Receiver, startReceiver } from './helpers/webhook-receiver.ts';

/**
 * kill -9 of a real `bantu start` with webhook deliveries pending (the receiver hangs, so some
 * are in flight and the rest wait), then a restart on the same data dir with the receiver
 * healthy: every event is delivered, none lost (at least once: receivers dedupe by webhook-id).
 */
describe('webhooks survive kill -9', { skip: inProcessOnly('kills bantu start, the one-process shape') }, () => {
  const processes: CliProcess[] = [];
  let dataDir = '';
  let receiver: Receiver | undefined;
  let databaseUrl: string | undefined;
  after(async () => {
    for (const p of processes) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await receiver?.close();
    if (databaseUrl) await dropDatabases(databaseUrl).catch(() => undefined);
    if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
  });

  it('delivers every event after a restart', async () => {
    dataDir = await makeTempDir('bantu-webhooks-crash-');
    if (process.env.BANTU_TEST_DATABASE_URL) {
      const url = new URL(process.env.BANTU_TEST_DATABASE_URL);
      url.pathname = `/bantu_whcrash_${randomBytes(5).toString('hex')}`;
      databaseUrl = url.toString();
    }
    const env = {
      BANTU_DATA_DIR: dataDir,
      BANTU_PORT: '0',
      BANTU_WEBHOOK_ALLOWED_NETWORKS: '127.0.0.0/8',
      BANTU_WEBHOOK_RETRY_BASE_MS: '100',
      BANTU_WEBHOOK_TIMEOUT_MS: '1000',
      ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
    };
    receiver = await startReceiver(() => 'hang');
    const first = runCli(['start'], env);
    processes.push(first);
    let base = await first.ready(120_000);
    const ca = await fs.readFile(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
    const agent = new Agent({ connect: { ca } });
    const key: string = JSON.parse(await fs.readFile(path.join(dataDir, 'secrets', 'default-tenant.json'), 'utf8')).keys.test.account_key;
    const call = async (method: 'GET' | 'POST', pathname: string, body?: unknown, contentType = 'application/json') => {
      const response = await request(`${base}${pathname}`, {
        method,
        dispatcher: agent,
        headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': contentType }) },
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      });
      // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON
      return { status: response.statusCode, json: (await response.body.json().catch(() => null)) as any };
    };

    const hook = await call('POST', '/v1/webhooks', { url: receiver.url, events: ['File_create'] });
    assert.equal(hook.status, 201);
    const files: string[] = [];
    for (let i = 0; i < 20; i++) {
      const created = await call('POST', `/v1/files?name=crash-${i}.txt`, `content ${i}`, 'text/plain');
      assert.equal(created.status, 201);
      files.push(created.json.id);
    }
    // Some attempts are in flight (hanging) when the process dies.
    await until(() => (receiver?.received.length ?? 0) >= 1, 'a first attempt in flight');
    first.child.kill('SIGKILL');
    await first.exited;

    receiver.answer = () => 200;
    const second = runCli(['start'], env);
    processes.push(second);
    base = await second.ready(120_000);
    await until(
      () => {
        const delivered = new Set((receiver?.received ?? []).map((r) => JSON.parse(r.body).data.file.id));
        return files.every((id) => delivered.has(id));
      },
      'every event delivered after the restart',
      120_000,
    );
    const events = receiver.verified(hook.json.secret);
    const byFile = new Map(events.map((e) => [e.data.file.id, e.id]));
    assert.equal(byFile.size, 20);
    await until(async () => {
      const listed = await call('GET', `/v1/webhooks/${hook.json.id}/deliveries?limit=50`);
      return listed.json.data.length === 20 && listed.json.data.every((d: { status: string }) => d.status === 'succeeded');
    }, 'every delivery recorded as succeeded');
    await agent.close();
    second.child.kill('SIGTERM');
    await second.exited;
  });
});
