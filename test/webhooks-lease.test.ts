import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { until, uploadRaw } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { type Receiver, startReceiver } from './helpers/webhook-receiver.ts';

/**
 * A claimed delivery's lease is short (two attempt deadlines and 5 s: 7 s here), shorter than
 * a long queue takes to drain at one attempt at a time. A delivery whose lease ends while it
 * still waits in the worker's queue is due again in the database and is claimed again by the
 * same worker, which must not send it a second time.
 */
describe('webhooks: a queue that outlives its lease', () => {
  let server: TestServer;
  let receiver: Receiver;
  before(async () => {
    server = await startServer({ BANTU_WEBHOOK_ALLOWED_NETWORKS: '127.0.0.0/8', BANTU_WEBHOOK_TIMEOUT_MS: '1000', BANTU_WEBHOOK_CONCURRENCY: '1' });
    // 250 ms an answer, one at a time: 40 deliveries take 10 s, past the 7 s lease.
    receiver = await startReceiver(() => ({ status: 200, afterMs: 250 }));
  });
  after(async () => {
    await receiver?.close();
    await server?.close();
  });

  it('sends each delivery once', async () => {
    const key = server.keys.test.account_key;
    const created = await server.request('POST', '/v1/webhooks', { auth: key, json: { url: receiver.url, events: ['File_create'] } });
    assert.equal(created.status, 201, created.text);
    const hook = created.json;
    for (let i = 0; i < 40; i++) assert.equal((await uploadRaw(server, key, Buffer.from(`l${i}`), { name: `l${i}.txt` })).status, 201);
    const ids = () => new Set(receiver.received.map((r) => String(r.headers['webhook-id'])));
    await until(() => ids().size === 40, 'every event delivered', 60_000);
    // The last ones' leases have ended by now: a second claim of them had a poll (500 ms) to come.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(receiver.received.length, 40, 'no delivery sent twice');
    const deliveries = (await server.request('GET', `/v1/webhooks/${hook.id}/deliveries?limit=100`, { auth: key })).json.data;
    assert.equal(deliveries.length, 40);
    assert.ok(
      deliveries.every((d: { status: string; attempt: number }) => d.status === 'succeeded' && d.attempt === 1),
      JSON.stringify(deliveries.map((d: { attempt: number }) => d.attempt)),
    );
  });
});
