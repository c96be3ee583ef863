import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { until, uploadRaw } from './helpers/files.ts';
import { decodeQuotedPrintable, waitForMails } from './helpers/mail.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { type Receiver, startReceiver } from './helpers/webhook-receiver.ts';

/**
 * Giving up: an endpoint failing for the whole retry window (made 1 s here; 3 days by
 * default) is disabled, an audit entry is written and the tenant's admins get a mail; enabled
 * again, it gets new events, and a failed delivery can be sent again. And the /metrics counters.
 */
describe('webhooks: an endpoint failing for the whole retry window', () => {
  let server: TestServer;
  let receiver: Receiver;
  before(async () => {
    server = await startServer({ BANTU_WEBHOOK_ALLOWED_NETWORKS: '127.0.0.0/8', BANTU_WEBHOOK_RETRY_BASE_MS: '100', BANTU_WEBHOOK_RETRY_WINDOW_SECONDS: '1' });
    receiver = await startReceiver(() => 500);
  });
  after(async () => {
    await receiver?.close();
    await server?.close();
  });

  it('is disabled, audited and mailed to the admins; enabled again, its events are delivered', async () => {
    const key = server.keys.test.account_key;
    const admin = await server.request('POST', '/v1/users', { auth: key, json: { email: 'boss@example.test', password: 'correct horse', name: 'Boss', role: 'admin' } });
    assert.equal(admin.status, 201, admin.text);
    const created = await server.request('POST', '/v1/webhooks', { auth: key, json: { url: receiver.url, events: ['File_create'] } });
    assert.equal(created.status, 201, created.text);
    const hook = created.json;
    assert.equal((await uploadRaw(server, key, Buffer.from('x'), { name: 'x.txt' })).status, 201);

    await until(async () => (await server.request('GET', `/v1/webhooks/${hook.id}`, { auth: key })).json.status === 'disabled', 'the endpoint disabled');
    const [delivery] = (await server.request('GET', `/v1/webhooks/${hook.id}/deliveries`, { auth: key })).json.data;
    assert.equal(delivery.status, 'failed');
    assert.equal(delivery.response_status, 500);
    assert.ok(delivery.attempt >= 2, `attempts: ${delivery.attempt}`);
    assert.equal(delivery.next_attempt_at, null);
    assert.equal(receiver.received.length, delivery.attempt);

    const audit = await server.request('GET', '/v1/audit', { auth: key });
    const entry = audit.json.data.find((e: { type: string }) => e.type === 'webhook_disabled');
    assert.ok(entry, audit.text);
    assert.equal(entry.detail.webhook_id, hook.id);
    assert.equal(entry.detail.url, receiver.url);
    const mails = await Promise.all((await waitForMails(server.dataDir, 1)).map(async (file) => decodeQuotedPrintable(await fs.readFile(file, 'utf8'))));
    const mail = mails.find((m) => m.includes('boss@example.test'));
    assert.ok(mail, 'a mail to the admin');
    assert.match(mail, /webhook endpoint was disabled/);
    assert.ok(mail.includes(hook.id));

    // Enabled again (the receiver healthy now): new events go out, and the failed delivery can be sent again.
    receiver.answer = () => 204;
    const tried = receiver.received.length;
    const enabled = await server.request('PATCH', `/v1/webhooks/${hook.id}`, { auth: key, json: { status: 'enabled' } });
    assert.equal(enabled.status, 200);
    assert.equal((await uploadRaw(server, key, Buffer.from('y'), { name: 'y.txt' })).status, 201);
    const retried = await server.request('POST', `/v1/webhooks/${hook.id}/deliveries/${delivery.id}/retry`, { auth: key });
    assert.equal(retried.status, 202);
    await until(async () => {
      const list = (await server.request('GET', `/v1/webhooks/${hook.id}/deliveries`, { auth: key })).json.data;
      return list.length === 2 && list.every((d: { status: string }) => d.status === 'succeeded');
    }, 'both events delivered');
    assert.equal(receiver.received.length, tried + 2);

    const metrics = (await server.request('GET', '/metrics')).text;
    const sample = (name: string, label: string) => {
      const line = metrics.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(label));
      assert.ok(line, `${name} ${label}`);
      return Number(line.split(' ').pop());
    };
    assert.equal(sample('webhook_deliveries_total', 'outcome="succeeded"'), 2);
    assert.equal(sample('webhook_deliveries_total', 'outcome="failed"'), 1);
    assert.equal(sample('webhook_deliveries_total', 'outcome="retrying"'), delivery.attempt - 1);
    assert.equal(sample('webhook_endpoints_disabled_total', 'environment="test"'), 1);
    // Exported at 0 before any disable, so Prometheus sees the first one as an increase (the alert).
    assert.equal(sample('webhook_endpoints_disabled_total', 'environment="live"'), 0);
    assert.equal(sample('webhook_delivery_duration_seconds_count', 'outcome="success"'), 2);
    assert.equal(sample('webhook_delivery_duration_seconds_count', 'outcome="failure"'), delivery.attempt);
    assert.equal(sample('webhook_deliveries_pending', 'environment="test"'), 0);
  });

  it('a hanging endpoint holds at most BANTU_WEBHOOK_CONCURRENCY (4) attempts at once, and a healthy one gets every event meanwhile', async () => {
    // Attempts here last up to 15 s (the default timeout): the hung ones stay open for the whole test.
    const key = server.keys.live.account_key;
    const hung = await startReceiver(() => 'hang');
    const healthy = await startReceiver(() => 200);
    try {
      const register = async (url: string) => (await server.request('POST', '/v1/webhooks', { auth: key, json: { url, events: ['File_create'] } })).json;
      const [hungHook, healthyHook] = [await register(hung.url), await register(healthy.url)];
      for (let i = 0; i < 12; i++) assert.equal((await uploadRaw(server, key, Buffer.from(`c${i}`), { name: `c${i}.txt` })).status, 201);
      await until(() => healthy.received.length === 12, 'every event at the healthy endpoint');
      assert.equal(healthy.verified(healthyHook.secret).length, 12);
      await until(() => hung.received.length === 4, 'four attempts at the hung endpoint');
      assert.equal(hung.received.length, 4);
      const waiting = (await server.request('GET', `/v1/webhooks/${hungHook.id}/deliveries`, { auth: key })).json.data;
      assert.equal(waiting.length, 12);
      assert.ok(waiting.every((d: { status: string; attempt: number }) => d.status === 'pending' && d.attempt === 0));
      assert.equal((await server.request('DELETE', `/v1/webhooks/${hungHook.id}`, { auth: key })).status, 204);
    } finally {
      await hung.close();
      await healthy.close();
    }
  });
});