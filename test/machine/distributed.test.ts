import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect as natsConnect } from '@nats-io/transport-node';
import { request } from 'undici';
import { InternalTokens } from '../../src/platform/internal-token.ts';
import { announce } from '../../src/platform/registry.ts';
import { runCli } from '../helpers/cli.ts';
import { type Deployment, machineDatabaseUrl, startDeployment } from '../helpers/distributed.ts';
import { backedUp, sha256, until, uploadRaw } from '../helpers/files.ts';
import { connect, connected } from '../helpers/sockets.ts';

/**
 * Distributed mode end to end: every service its own `bantu serve` process, found through the
 * registry on NATS, behind one gateway. Two files instances.
 */
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The address a service process printed ("... is running at http://host:port"). */
function addressOf(deployment: Deployment, service: 'files' | 'identity', index = 0): string {
  const child = deployment.processes.get(service)?.[index];
  const match = /is running at (http:\/\/\S+)/.exec(child?.stdout() ?? '');
  assert.ok(match?.[1], `${service} #${index} address`);
  return match[1];
}

describe('distributed mode: bantu serve <service> behind the gateway', () => {
  let deployment: Deployment;
  before(async () => {
    deployment = await startDeployment();
  });
  after(async () => deployment?.close());

  it('routes through the gateway to the services: keys, uploads (raw and multipart) and downloads spread over both files instances', async () => {
    const key = deployment.keys.test.account_key;
    assert.equal((await deployment.request('GET', '/v1/keys', { basic: key })).status, 200);
    const content = randomBytes(3 * 1024 * 1024 + 17);
    const created = await uploadRaw(deployment, key, content, { name: 'big.bin' });
    assert.equal(created.status, 201, created.text);
    assert.equal(created.json.sha256, sha256(content));
    const download = await request(`${deployment.url}/v1/files/${created.json.id}/content`, { headers: { authorization: `Bearer ${key}` }, dispatcher: deployment.http });
    assert.equal(download.statusCode, 200);
    assert.equal(sha256(Buffer.from(await download.body.arrayBuffer())), sha256(content));

    const form = new FormData();
    form.set('file', new Blob(['hello from a form']), 'form.txt');
    const multipart = await fetch(`${deployment.url}/v1/files`, {
      method: 'POST',
      body: form,
      headers: { authorization: `Bearer ${key}` },
      // @ts-expect-error undici's fetch takes a dispatcher
      dispatcher: deployment.http,
    });
    assert.equal(multipart.status, 201);
    assert.equal((await multipart.json()).size, 17);

    // Both files instances answer: each counts requests of its own in /metrics, labelled with its service.
    for (let i = 0; i < 10; i++) assert.equal((await deployment.request('GET', `/v1/files/${created.json.id}`, { auth: key })).status, 200);
    for (const index of [0, 1]) {
      const metrics = await (await request(`${addressOf(deployment, 'files', index)}/metrics`)).body.text();
      assert.match(metrics, /^http_request_duration_seconds_count\{service="files",[^}]*route="\/v1\/files\/:id"[^}]*\} [1-9]/m, `files #${index} served reads`);
    }
  });

  it('users register, log in and read themselves through the gateway (tokens signed by identity, verified by the gateway)', async () => {
    const app = deployment.keys.test.application_key;
    const email = `u${randomBytes(4).toString('hex')}@example.com`;
    const registered = await deployment.request('POST', '/v1/auth/register', { basic: app, json: { email, password: 'correct horse battery', name: 'Ada' } });
    assert.equal(registered.status, 201, registered.text);
    const me = await deployment.request('GET', '/v1/users/me', { auth: registered.json.access_token });
    assert.equal(me.status, 200, me.text);
    assert.equal(me.json.email, email);
  });

  it('backup restores through the files instances (no files code in the backup process), sending the bytes only when the files store lacks them', async () => {
    const tenant = await deployment.request('POST', '/v1/tenants', { auth: deployment.operatorToken, json: { name: `Restore ${randomBytes(3).toString('hex')}` } });
    assert.equal(tenant.status, 201, tenant.text);
    const key = tenant.json.keys.test.account_key;
    const first = `first ${randomBytes(8).toString('hex')}`;
    const created = await uploadRaw(deployment, key, first, { name: 'doc.txt' });
    assert.equal(created.status, 201);
    const id = created.json.id;
    assert.equal((await deployment.request('PUT', `/v1/files/${id}/content`, { auth: key, body: 'second', headers: { 'content-type': 'text/plain' } })).status, 200);
    await backedUp(deployment, key, 2);

    const restored = await deployment.request('POST', `/v1/files/${id}/versions/1/restore`, { auth: key });
    assert.equal(restored.status, 200, restored.text);
    assert.deepEqual({ version: restored.json.version, sha256: restored.json.sha256 }, { version: 3, sha256: sha256(first) });

    // The files store loses version 1's bytes: the restore sends them from the backup store.
    await fs.rm(path.join(deployment.dataDir, 'blobs', 'test', sha256(first).slice(0, 2), sha256(first)));
    assert.equal((await deployment.request('PUT', `/v1/files/${id}/content`, { auth: key, body: 'third', headers: { 'content-type': 'text/plain' } })).status, 200);
    const again = await deployment.request('POST', `/v1/files/${id}/versions/1/restore`, { auth: key });
    assert.equal(again.status, 200, again.text);
    assert.equal(again.json.version, 5);
    const content = await deployment.request('GET', `/v1/files/${id}/content`, { auth: key });
    assert.equal(content.text, first);
    assert.equal((await deployment.request('POST', `/v1/files/${id}/versions/99/restore`, { auth: key })).status, 404);
  });

  it('internal routes are never reachable through the gateway', async () => {
    const key = deployment.keys.test.account_key;
    const answer = await deployment.request('POST', '/internal/files/file_x/restore', { auth: key, headers: { 'x-bantu-version': '{}' } });
    assert.equal(answer.status, 404);
  });

  it("a service's own port grants nothing: no signature, a forged one, an expired one and one made for another route all get 401", async () => {
    const files = addressOf(deployment, 'files');
    const url = '/v1/files';
    const principal = { kind: 'account_key' as const, keyId: 'key_x', tenantId: 'ten_x', environment: 'test' as const };
    const genuine = new InternalTokens(deployment.env.BANTU_SECRET_KEY as string);
    const forged = new InternalTokens(randomBytes(32).toString('base64url'));
    const expired = new InternalTokens(deployment.env.BANTU_SECRET_KEY as string, () => Date.now() - 60_000);
    const claims = { principal, requestId: 'r1', method: 'GET', url };
    const cases: Array<[string, Record<string, string>]> = [
      ['none', {}],
      ['forged', { 'x-bantu-internal': forged.sign(claims) }],
      ['expired', { 'x-bantu-internal': expired.sign(claims) }],
      ['another route', { 'x-bantu-internal': genuine.sign({ ...claims, url: '/v1/usage' }) }],
      ['garbage', { 'x-bantu-internal': 'v1.e30.AAAA' }],
      ['a user key as credential', { authorization: `Bearer ${deployment.keys.test.account_key}` }],
    ];
    for (const [what, headers] of cases) {
      const answer = await request(`${files}${url}`, { headers });
      assert.equal(answer.statusCode, 401, what);
      assert.equal(((await answer.body.json()) as { code: string }).code, 'unauthorized', what);
    }
    // The gateway's genuine signature does not open internal routes: those take other services' calls only.
    const internalUrl = '/internal/files/file_x/restore';
    const internal = await request(`${files}${internalUrl}`, {
      method: 'POST',
      headers: { 'x-bantu-internal': genuine.sign({ ...claims, method: 'POST', url: internalUrl }), 'x-bantu-version': '{}' },
    });
    assert.equal(internal.statusCode, 404);
    await internal.body.dump();
    // The same request with a genuine signature passes the check (and reaches the route).
    const passed = await request(`${files}${url}`, { headers: { 'x-bantu-internal': genuine.sign(claims) } });
    assert.notEqual(passed.statusCode, 401);
    await passed.body.dump();
  });

  it('an announcement the installation did not sign gets no traffic: a stranger on NATS cannot pose as a files instance', async () => {
    const hits: string[] = [];
    const stranger = http.createServer((req, res) => {
      hits.push(req.url ?? '');
      res.end('{}');
    });
    await new Promise<void>((resolve) => stranger.listen(0, '127.0.0.1', resolve));
    const nc = await natsConnect({ servers: deployment.env.NATS_URL });
    try {
      const forged = new InternalTokens(randomBytes(32).toString('base64url'));
      const address = `http://127.0.0.1:${(stranger.address() as AddressInfo).port}`;
      // It even copies the installation's key id, which is public in the registry.
      const keyId = new InternalTokens(deployment.env.BANTU_SECRET_KEY as string).keyId();
      const posing = await announce(nc, deployment.env.BANTU_NATS_PREFIX as string, { service: 'files', version: '0.1.0', address, keyId, routes: [] }, forged);
      await sleep(3000);
      for (let i = 0; i < 10; i++) assert.equal((await deployment.request('GET', '/v1/files', { auth: deployment.keys.test.account_key })).status, 200);
      assert.deepEqual(hits, []);
      assert.equal((await deployment.request('GET', '/readyz')).json.services.files.instances, 2);
      await posing.stop();
    } finally {
      await nc.close();
      await new Promise((resolve) => stranger.close(resolve));
    }
  });

  it('/readyz of the gateway lists every service with its live instance count', async () => {
    const ready = await deployment.request('GET', '/readyz');
    assert.equal(ready.status, 200);
    assert.deepEqual(ready.json.services, { identity: { instances: 1 }, files: { instances: 2 }, notifications: { instances: 2 }, backup: { instances: 1 }, exports: { instances: 1 }, webhooks: { instances: 1 } });
    assert.equal(ready.json.dependencies.nats.status, 'ok');
  });

  it('the gateway publishes the API document of every service at /openapi.json (and /docs), as `bantu start` does', async () => {
    const document = await deployment.request('GET', '/openapi.json');
    assert.equal(document.status, 200);
    for (const path of ['/v1/files', '/v1/auth/login', '/v1/files/{id}/versions', '/.well-known/jwks.json']) assert.ok(document.json.paths[path], path);
    assert.equal((await deployment.request('GET', '/docs/')).status, 200);
  });

  it('kill -9 of one of two files instances while a client reads and writes: within 5 s no request fails, no acknowledged write is lost; a restarted instance gets traffic again', async () => {
    const key = deployment.keys.test.account_key;
    const seed = await uploadRaw(deployment, key, 'seed', { name: `seed-${randomBytes(3).toString('hex')}` });
    assert.equal(seed.status, 201);
    const acknowledged: Array<{ id: string; sha256: string; afterKill: boolean }> = [];
    const failures: number[] = [];
    let killedAt = 0;
    let stop = false;
    const client = async (n: number) => {
      for (let i = 0; !stop; i++) {
        const content = `client ${n} write ${i} ${randomBytes(8).toString('hex')}`;
        const write = await uploadRaw(deployment, key, content, { name: `w-${n}-${i}-${randomBytes(3).toString('hex')}` }).catch(() => undefined);
        if (write?.status === 201) acknowledged.push({ id: write.json.id, sha256: write.json.sha256, afterKill: killedAt > 0 });
        else if (killedAt) failures.push(Date.now() - killedAt);
        else assert.fail(`write failed before the kill: ${write?.status} ${write?.text}`);
        const read = await deployment.request('GET', `/v1/files/${seed.json.id}`, { auth: key }).catch(() => undefined);
        if (read?.status !== 200) {
          if (killedAt) failures.push(Date.now() - killedAt);
          else assert.fail(`read failed before the kill: ${read?.status}`);
        }
      }
    };
    const clients = [0, 1, 2, 3].map(client);
    await sleep(1500);
    const victim = deployment.processes.get('files')?.[0];
    assert.ok(victim);
    killedAt = Date.now();
    victim.child.kill('SIGKILL');
    // Past the 5 s window, and until writes have gone on for a while: counted, not timed, so
    // a slow machine only takes longer.
    const writesAfterKill = () => acknowledged.filter((write) => write.afterKill).length;
    await sleep(8000);
    for (let waited = 0; writesAfterKill() < 20 && waited < 120_000; waited += 200) await sleep(200);
    stop = true;
    await Promise.all(clients);
    const late = failures.filter((ms) => ms > 5000);
    assert.deepEqual(late, [], `requests failed more than 5 s after the kill (${failures.length} failed in all)`);
    assert.ok(writesAfterKill() >= 20, `writes went on after the kill (${writesAfterKill()})`);
    for (const { id, sha256: digest } of acknowledged) {
      const got = await deployment.request('GET', `/v1/files/${id}`, { auth: key });
      assert.equal(got.status, 200, `acknowledged ${id}`);
      assert.equal(got.json.sha256, digest);
    }

    await deployment.waitForInstances({ files: 1 });
    const restarted = await deployment.startInstance('files');
    await deployment.waitForInstances({ files: 2 });
    const address = /is running at (http:\/\/\S+)/.exec(restarted.stdout())?.[1];
    assert.ok(address);
    for (let i = 0; i < 12; i++) assert.equal((await deployment.request('GET', `/v1/files/${seed.json.id}`, { auth: key })).status, 200);
    const metrics = await (await request(`${address}/metrics`)).body.text();
    assert.match(metrics, /http_request_duration_seconds_count\{[^}]*route="\/v1\/files\/:id"[^}]*\} [1-9]/, 'the restarted instance served reads');
  });

  it('no files instance alive: its routes answer 503 service_unavailable with Retry-After at once while identity keeps working; one started: traffic again', async () => {
    const key = deployment.keys.test.account_key;
    for (const child of deployment.processes.get('files') ?? []) if (child.child.exitCode === null) child.child.kill('SIGTERM');
    await deployment.waitForInstances({ files: 0 });
    const refused = await deployment.request('GET', '/v1/files', { auth: key });
    assert.equal(refused.status, 503);
    assert.equal(refused.json.code, 'service_unavailable');
    assert.equal(refused.headers['retry-after'], '1');
    const upload = await uploadRaw(deployment, key, 'while files is away', { name: 'away.txt' });
    assert.equal(upload.status, 503);
    assert.equal((await deployment.request('GET', '/v1/keys', { auth: key })).status, 200);

    await deployment.startInstance('files');
    await deployment.waitForInstances({ files: 1 });
    assert.equal((await deployment.request('GET', '/v1/files', { auth: key })).status, 200);
  });

  it('Socket.IO through the gateway, over WebSocket and polling, to both notifications instances: every socket gets every event it may see', async () => {
    const key = deployment.keys.test.account_key;
    const inboxes = [0, 1, 2, 3].map((i) => connect(deployment, { auth: { key }, transports: i % 2 ? ['polling'] : ['websocket'] }));
    try {
      await Promise.all(inboxes.map((inbox) => connected(inbox.socket)));
      const sessions = new Set(inboxes.map((inbox) => (inbox.socket.io.engine as unknown as { id: string }).id.split('.')[0]));
      assert.equal(sessions.size, 2, 'the sockets landed on both instances');
      const name = `live-${randomBytes(3).toString('hex')}.txt`;
      const created = await uploadRaw(deployment, key, 'hello sockets', { name });
      assert.equal(created.status, 201);
      for (const inbox of inboxes) {
        const got = await inbox.waitFor((event) => event.name === 'Notify_File_create' && event.payload.file.id === created.json.id, `${name} on every socket`);
        assert.equal(got.payload.file.name, name);
      }
    } finally {
      for (const inbox of inboxes) inbox.close();
    }
  });

  it('every notifications instance stopped: /socket.io/ answers 503 and /v1/files keeps working; one started: a socket that reconnects with `since` gets every event it missed, once', async () => {
    const key = deployment.keys.test.account_key;
    const first = connect(deployment, { auth: { key } });
    await connected(first.socket);
    const before = await uploadRaw(deployment, key, 'before', { name: `before-${randomBytes(3).toString('hex')}.txt` });
    const seen = await first.waitFor((event) => event.payload.file.id === before.json.id, 'the event before the stop');
    first.close();

    for (const child of deployment.processes.get('notifications') ?? []) if (child.child.exitCode === null) child.child.kill('SIGTERM');
    await deployment.waitForInstances({ notifications: 0 });
    const refused = await deployment.request('GET', '/socket.io/?EIO=4&transport=polling');
    assert.equal(refused.status, 503);
    assert.equal(refused.json.code, 'service_unavailable');
    const missed: string[] = [];
    for (let i = 0; i < 3; i++) {
      const created = await uploadRaw(deployment, key, `missed ${i}`, { name: `missed-${i}-${randomBytes(3).toString('hex')}.txt` });
      assert.equal(created.status, 201, 'files keeps working without notifications');
      missed.push(created.json.id);
    }

    await deployment.startInstance('notifications');
    await deployment.waitForInstances({ notifications: 1 });
    const again = connect(deployment, { auth: { key, since: seen.payload.event_id } });
    try {
      await connected(again.socket);
      for (const id of missed) await again.waitFor((event) => event.payload.file.id === id, `missed ${id}`);
      await sleep(300);
      const replayed = again.events.filter((event) => missed.includes(event.payload.file.id)).map((event) => event.payload.file.id);
      assert.deepEqual(replayed, missed, 'each missed event once, in commit order');
    } finally {
      again.close();
    }
  });

  it('a process with another BANTU_SECRET_KEY refuses to join the installation: one plain line, exit 2', async () => {
    const intruder = runCli(['serve', 'files'], { ...deployment.env, BANTU_SECRET_KEY: randomBytes(32).toString('base64url') });
    const exit = await intruder.exited;
    assert.equal(exit.code, 2, intruder.stderr());
    assert.match(intruder.stderr(), /^bantu serve files: a running \w+ instance of this installation \(BANTU_NATS_PREFIX\) uses another BANTU_SECRET_KEY; every process must share one\n$/);
  });
});

describe('bantu serve refuses to start without what it needs: one plain line, exit 2', () => {
  const base = { NATS_URL: process.env.NATS_URL ?? 'nats://127.0.0.1:4222', BANTU_NATS_PREFIX: `t${randomBytes(4).toString('hex')}` };
  const cases: Array<[string, string[], Record<string, string>, RegExp]> = [
    ['an unknown service', ['serve', 'mailroom'], {}, /^bantu serve: unknown service "mailroom"; choose one of gateway, identity, files, notifications, backup, exports, webhooks\n$/],
    ['no DATABASE_URL', ['serve', 'files'], base, /^bantu serve files: DATABASE_URL is required \(the PostgreSQL every process of the installation shares\)\n$/],
    ['no NATS_URL', ['serve', 'gateway'], { DATABASE_URL: machineDatabaseUrl() }, /^bantu serve gateway: NATS_URL is required \(the registry where services find each other\)\n$/],
    [
      'no REDIS_URL for a process that checks credentials',
      ['serve', 'identity'],
      { ...base, DATABASE_URL: machineDatabaseUrl() },
      /^bantu serve identity: REDIS_URL is required \(ended sessions and deleted users must be refused by every process that checks credentials\)\n$/,
    ],
  ];
  for (const [what, args, env, message] of cases) {
    it(what, async () => {
      const child = runCli(args, { ...env, NATS_URL: env.NATS_URL, REDIS_URL: undefined });
      const exit = await child.exited;
      assert.equal(exit.code, 2);
      assert.match(child.stderr(), message);
    });
  }
  it('an unreachable NATS: a clear line naming it, exit 1, and no hang', async () => {
    const child = runCli(['serve', 'files'], { DATABASE_URL: machineDatabaseUrl(), NATS_URL: 'nats://127.0.0.1:1' });
    await until(() => child.child.exitCode !== null, 'bantu serve to give up', 120_000);
    assert.equal(child.child.exitCode, 1);
    assert.match(child.stderr(), /NATS at nats:\/\/127\.0\.0\.1:1 does not answer/);
  });
});
