import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Webhook } from 'standardwebhooks';
import { createTenant, until, uploadRaw } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { type Receiver, startReceiver } from './helpers/webhook-receiver.ts';

/**
 * Webhooks end to end: registration, the routes of the contract, and deliveries to real
 * receivers on loopback (allowed by BANTU_WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8), verified with
 * the official standardwebhooks library. Retries are made quick (100 ms base) and attempts
 * short (1.5 s) so that the tests run fast; the defaults are 5 s and 15 s.
 */
describe('webhooks', () => {
  let server: TestServer;
  let key: string;
  const receivers: Receiver[] = [];
  const receiver = async (answer?: Receiver['answer']) => {
    const r = await startReceiver(answer);
    receivers.push(r);
    return r;
  };
  const register = async (auth: string, url: string, extra: Record<string, unknown> = {}) => {
    const response = await server.request('POST', '/v1/webhooks', { auth, json: { url, ...extra } });
    assert.equal(response.status, 201, response.text);
    return response.json as { id: string; secret: string };
  };
  const deliveries = async (auth: string, id: string) => (await server.request('GET', `/v1/webhooks/${id}/deliveries`, { auth })).json.data as Array<Record<string, unknown>>;

  before(async () => {
    server = await startServer({ BANTU_WEBHOOK_ALLOWED_NETWORKS: '127.0.0.0/8', BANTU_WEBHOOK_RETRY_BASE_MS: '100', BANTU_WEBHOOK_TIMEOUT_MS: '1500' });
    key = server.keys.test.account_key;
  });
  after(async () => {
    for (const r of receivers) await r.close();
    await server?.close();
  });

  it('create, list, read, change and delete; the secret only at creation; another tenant sees 404', async () => {
    const r = await receiver();
    const created = await server.request('POST', '/v1/webhooks', { auth: key, json: { url: r.url, description: 'CRM' } });
    assert.equal(created.status, 201, created.text);
    const hook = created.json;
    assert.match(hook.id, /^whk_/);
    assert.equal(hook.url, r.url);
    assert.deepEqual(hook.events, ['File_create', 'File_update', 'File_delete']);
    assert.equal(hook.status, 'enabled');
    assert.equal(hook.description, 'CRM');
    assert.match(hook.secret, /^whsec_[A-Za-z0-9+/]+=*$/);
    assert.ok(Buffer.from(hook.secret.slice(6), 'base64').length >= 24);

    const read = await server.request('GET', `/v1/webhooks/${hook.id}`, { auth: key });
    assert.equal(read.status, 200);
    assert.equal(read.json.secret, undefined);
    const listed = await server.request('GET', '/v1/webhooks?limit=200', { auth: key });
    assert.equal(listed.status, 200);
    const mine = listed.json.data.find((w: { id: string }) => w.id === hook.id);
    assert.ok(mine);
    assert.equal(mine.secret, undefined);
    assert.ok(!listed.text.includes(hook.secret));

    const changed = await server.request('PATCH', `/v1/webhooks/${hook.id}`, { auth: key, json: { events: ['File_delete'], status: 'disabled', description: null } });
    assert.equal(changed.status, 200, changed.text);
    assert.deepEqual(changed.json.events, ['File_delete']);
    assert.equal(changed.json.status, 'disabled');
    assert.equal(changed.json.description, null);

    const other = await createTenant(server, 'webhooks-other');
    for (const [method, path] of [
      ['GET', `/v1/webhooks/${hook.id}`],
      ['PATCH', `/v1/webhooks/${hook.id}`],
      ['DELETE', `/v1/webhooks/${hook.id}`],
      ['POST', `/v1/webhooks/${hook.id}/ping`],
      ['POST', `/v1/webhooks/${hook.id}/secret/rotate`],
      ['GET', `/v1/webhooks/${hook.id}/deliveries`],
    ] as const) {
      const options = method === 'PATCH' ? { json: { status: 'enabled' } } : {};
      const foreign = await server.request(method, path, { auth: other.test.account_key, ...options });
      assert.equal(foreign.status, 404, `${method} ${path}: ${foreign.text}`);
      assert.equal(foreign.json.code, 'not_found');
      // The other environment of the same tenant does not see it either.
      const live = await server.request(method, path, { auth: server.keys.live.account_key, ...options });
      assert.equal(live.status, 404, `${method} ${path} live`);
    }

    const deleted = await server.request('DELETE', `/v1/webhooks/${hook.id}`, { auth: key });
    assert.equal(deleted.status, 204);
    assert.equal((await server.request('GET', `/v1/webhooks/${hook.id}`, { auth: key })).status, 404);
  });

  it('bad input: problem+json with a stable code; application keys are refused', async () => {
    const r = await receiver();
    const cases: Array<[unknown, number, string]> = [
      [{ url: r.url, events: ['File_rename'] }, 422, 'validation_failed'],
      [{ url: r.url, events: [] }, 422, 'validation_failed'],
      [{ url: 'not a url' }, 422, 'validation_failed'],
      [{ url: 'ftp://127.0.0.1/x' }, 422, 'validation_failed'],
      [{ url: 'http://user:pw@127.0.0.1/x' }, 422, 'validation_failed'],
      [{}, 422, 'validation_failed'],
      [{ url: r.url, extra: 1 }, 422, 'validation_failed'],
    ];
    for (const [json, status, code] of cases) {
      const response = await server.request('POST', '/v1/webhooks', { auth: key, json });
      assert.equal(response.status, status, `${JSON.stringify(json)}: ${response.text}`);
      assert.equal(response.json.code, code);
      assert.match(String(response.headers['content-type']), /application\/problem\+json/);
    }
    const app = await server.request('POST', '/v1/webhooks', { auth: server.keys.test.application_key, json: { url: r.url } });
    assert.equal(app.status, 403);
    assert.equal(app.json.code, 'forbidden');
    const none = await server.request('GET', '/v1/webhooks');
    assert.equal(none.status, 401);
    const badCursor = await server.request('GET', '/v1/webhooks?cursor=%%%', { auth: key });
    assert.equal(badCursor.status, 422);
    const unknownDelivery = await server.request('POST', `/v1/webhooks/whk_nope/deliveries/dlv_nope/retry`, { auth: key });
    assert.equal(unknownDelivery.status, 404);
  });

  it('File_create, File_update and File_delete reach the tenant receiver, verified; another tenant and the other environment get none of them', async () => {
    const mine = await receiver();
    const otherTenant = await receiver();
    const otherEnvironment = await receiver();
    const hook = await register(key, mine.url);
    const other = await createTenant(server, 'webhooks-isolation');
    const otherHook = await register(other.test.account_key, otherTenant.url);
    const liveHook = await register(server.keys.live.account_key, otherEnvironment.url);

    const created = await uploadRaw(server, key, Buffer.from('v1'), { name: 'hooked.txt', contentType: 'text/plain' });
    assert.equal(created.status, 201, created.text);
    const id = created.json.id;
    assert.equal((await server.request('PUT', `/v1/files/${id}/content`, { auth: key, body: 'v2', headers: { 'content-type': 'text/plain' } })).status, 200);
    assert.equal((await server.request('DELETE', `/v1/files/${id}`, { auth: key })).status, 204);
    // Events of their own, so that their receivers are known to be working when checked.
    assert.equal((await uploadRaw(server, other.test.account_key, Buffer.from('b'), { name: 'b.txt' })).status, 201);
    assert.equal((await uploadRaw(server, server.keys.live.account_key, Buffer.from('l'), { name: 'l.txt' })).status, 201);

    await until(() => mine.received.length >= 3 && otherTenant.received.length >= 1 && otherEnvironment.received.length >= 1, 'the deliveries');
    const events = mine.verified(hook.secret);
    assert.deepEqual(events.map((e) => e.type).sort(), ['File_create', 'File_delete', 'File_update']);
    for (const event of events) {
      assert.equal(event.data.file.id, id);
      assert.equal((event as unknown as { environment: string }).environment, 'test');
    }
    for (const request of mine.received) {
      const body = JSON.parse(request.body);
      assert.equal(request.headers['webhook-id'], body.id);
      assert.deepEqual(Object.keys(body).sort(), ['data', 'environment', 'id', 'occurred_at', 'type']);
      assert.deepEqual(Object.keys(body.data).sort(), ['actor', 'file']);
    }
    const foreign = [...otherTenant.verified(otherHook.secret), ...otherEnvironment.verified(liveHook.secret)];
    assert.ok(foreign.every((e) => e.data.file.id !== id), 'no event of the file elsewhere');
    assert.throws(() => new Webhook(otherHook.secret).verify(mine.received[0]?.body ?? '', mine.received[0]?.headers as Record<string, string>));

    await until(async () => (await deliveries(key, hook.id)).filter((d) => d.status === 'succeeded').length === 3, 'three succeeded deliveries');
    const listed = await deliveries(key, hook.id);
    for (const d of listed) {
      assert.equal(d.attempt, 1);
      assert.equal(d.response_status, 200);
      assert.equal(d.next_attempt_at, null);
      assert.equal(typeof d.duration_ms, 'number');
    }
  });

  it('a receiver answering 500 twice then 200: three attempts with the same webhook-id, shown in the deliveries, once after dedupe', async () => {
    const flaky = await receiver((n) => (n < 2 ? 500 : 200));
    const hook = await register(key, flaky.url, { events: ['File_create'] });
    const created = await uploadRaw(server, key, Buffer.from('flaky'), { name: 'flaky.txt' });
    assert.equal(created.status, 201);
    await until(async () => (await deliveries(key, hook.id))[0]?.status === 'succeeded', 'the delivery to succeed');
    assert.equal(flaky.received.length, 3);
    const ids = new Set(flaky.received.map((r) => r.headers['webhook-id']));
    assert.equal(ids.size, 1);
    const events = flaky.verified(hook.secret);
    assert.equal(new Map(events.map((e) => [e.id, e])).size, 1);
    const [delivery] = await deliveries(key, hook.id);
    assert.equal(delivery?.attempt, 3);
    assert.equal(delivery?.response_status, 200);
    assert.equal(delivery?.event_id, [...ids][0]);
    assert.equal(delivery?.type, 'File_create');
  });

  it('a receiver that hangs: the attempt times out and is retried', async () => {
    const hanging = await receiver((n) => (n === 0 ? 'hang' : 200));
    const hook = await register(key, hanging.url, { events: ['File_create'] });
    assert.equal((await uploadRaw(server, key, Buffer.from('hang'), { name: 'hang.txt' })).status, 201);
    await until(async () => (await deliveries(key, hook.id))[0]?.status === 'succeeded', 'the retried delivery to succeed');
    assert.equal(hanging.received.length, 2);
    assert.equal(hanging.received[0]?.headers['webhook-id'], hanging.received[1]?.headers['webhook-id']);
    assert.equal((await deliveries(key, hook.id))[0]?.attempt, 2);
  });

  it('an endpoint that never answers does not hold back a healthy one', async () => {
    const dead = await receiver(() => 'hang');
    const healthy = await receiver();
    const deadHook = await register(key, dead.url, { events: ['File_create'] });
    const healthyHook = await register(key, healthy.url, { events: ['File_create'] });
    for (let i = 0; i < 12; i++) assert.equal((await uploadRaw(server, key, Buffer.from(`n${i}`), { name: `n${i}.txt` })).status, 201);
    await until(async () => (await deliveries(key, healthyHook.id)).filter((d) => d.status === 'succeeded').length === 12, 'every event at the healthy endpoint');
    assert.equal(healthy.verified(healthyHook.secret).length, 12);
    const stuck = await deliveries(key, deadHook.id);
    assert.equal(stuck.length, 12);
    assert.ok(stuck.every((d) => d.status === 'pending'));
    assert.ok(dead.received.length > 0, 'the dead endpoint was tried');
    await server.request('DELETE', `/v1/webhooks/${deadHook.id}`, { auth: key });
  });

  it('rotation: during the overlap a delivery carries two signatures, each verifiable with its own secret; ping and retry', async () => {
    const r = await receiver();
    const hook = await register(key, r.url);
    const rotated = await server.request('POST', `/v1/webhooks/${hook.id}/secret/rotate`, { auth: key });
    assert.equal(rotated.status, 200, rotated.text);
    const secret = rotated.json.secret;
    assert.match(secret, /^whsec_/);
    assert.notEqual(secret, hook.secret);
    const ping = await server.request('POST', `/v1/webhooks/${hook.id}/ping`, { auth: key });
    assert.equal(ping.status, 202, ping.text);
    await until(() => r.received.length === 1, 'the ping');
    const [request] = r.received;
    assert.ok(request);
    const signatures = String(request.headers['webhook-signature']).split(' ');
    assert.equal(signatures.length, 2);
    const headers = request.headers as Record<string, string>;
    assert.equal((new Webhook(secret).verify(request.body, headers) as { type: string }).type, 'ping');
    assert.equal((new Webhook(hook.secret).verify(request.body, headers) as { type: string }).type, 'ping');
    // Each secret verifies its own signature alone.
    for (const [i, s] of [secret, hook.secret].entries()) {
      new Webhook(s).verify(request.body, { ...headers, 'webhook-signature': signatures[i] as string });
    }
    assert.throws(() => new Webhook(secret).verify(request.body, { ...headers, 'webhook-signature': signatures[1] as string }));

    await until(async () => (await deliveries(key, hook.id))[0]?.status === 'succeeded', 'the ping recorded');
    const [delivery] = await deliveries(key, hook.id);
    const retried = await server.request('POST', `/v1/webhooks/${hook.id}/deliveries/${delivery?.id}/retry`, { auth: key });
    assert.equal(retried.status, 202);
    await until(() => r.received.length === 2, 'the retried ping');
    assert.equal(r.received[1]?.headers['webhook-id'], request.headers['webhook-id']);
  });
});

describe('webhooks: address safety without an allow-list', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => server?.close());

  it('refuses http, loopback, private, link-local and metadata addresses, and names resolving to them', async () => {
    const { hostname } = await import('node:os');
    const { lookup } = await import('node:dns/promises');
    // The machine's own name resolves to a loopback address (see /etc/hosts): a name, not a literal.
    const own = hostname();
    assert.ok((await lookup(own, { all: true })).every((a) => a.address.startsWith('127.') || a.address === '::1'), `${own} resolves to loopback`);
    for (const url of [
      'http://127.0.0.1:9/hook',
      // A public address, but plain http: no lookup, no connection.
      'http://93.184.216.34/hook',
      'https://127.0.0.1/hook',
      'https://127.1.2.3/hook',
      'https://[::1]/hook',
      'https://[::ffff:127.0.0.1]/hook',
      'https://localhost/hook',
      `https://${own}/hook`,
      'https://10.1.2.3/hook',
      'https://192.168.1.1/hook',
      'https://172.16.0.1/hook',
      'https://169.254.169.254/latest/meta-data',
      'https://[fd00:ec2::254]/hook',
      'https://[fe80::1]/hook',
      'https://224.0.0.1/hook',
      'https://0.0.0.0/hook',
    ]) {
      const response = await server.request('POST', '/v1/webhooks', { auth: server.keys.test.account_key, json: { url } });
      assert.equal(response.status, 422, `${url}: ${response.text}`);
      assert.equal(response.json.code, 'validation_failed');
      assert.equal(response.json.errors?.[0]?.field, 'url');
    }
    const listed = await server.request('GET', '/v1/webhooks', { auth: server.keys.test.account_key });
    assert.deepEqual(listed.json.data, []);
  });
});
