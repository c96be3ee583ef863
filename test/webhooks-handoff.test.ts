import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import type { BusEvent } from '../src/core/events.ts';
import type { Environment } from '../src/core/principal.ts';
import { type DeliveryHandOff, webhooksConsumer } from '../src/services/webhooks/consumer.ts';
import type { DeliveryRow } from '../src/services/webhooks/repo/deliveries.repo.ts';
import type { EndpointRow } from '../src/services/webhooks/repo/endpoints.repo.ts';
import { until } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { type Receiver, startReceiver } from './helpers/webhook-receiver.ts';

/**
 * The webhooks consumer writes the deliveries its worker has room for already leased to it and
 * hands them over in memory; the rest are written due now, for a claim. Driven here with events
 * of its own (not on the bus) and a hand-off that records what it is given, on the server's
 * real database; the server's own worker claims what is left due.
 */
describe('webhooks: deliveries handed from the consumer to its worker', () => {
  let server: TestServer;
  let receiver: Receiver;
  let endpointId: string;
  let tenantId: string;
  before(async () => {
    server = await startServer({ BANTU_WEBHOOK_ALLOWED_NETWORKS: '127.0.0.0/8' });
    receiver = await startReceiver(() => 200);
    const created = await server.request('POST', '/v1/webhooks', { auth: server.keys.test.account_key, json: { url: receiver.url, events: ['File_create'] } });
    assert.equal(created.status, 201, created.text);
    endpointId = created.json.id;
    const db = server.app.databases.environments.test;
    tenantId = (await sql<{ tenant_id: string }>`select tenant_id from webhooks.endpoint where id = ${endpointId}`.execute(db)).rows[0]?.tenant_id ?? '';
  });
  after(async () => {
    await receiver?.close();
    await server?.close();
  });

  function fileEvent(): BusEvent {
    const id = `fil_${randomBytes(8).toString('hex')}`;
    return {
      event_id: `evt_${randomBytes(8).toString('hex')}`,
      type: 'File_create',
      tenant_id: tenantId,
      environment: 'test',
      occurred_at: new Date().toISOString(),
      actor: { type: 'key', id: 'key_test' },
      data: { file: { id, name: `${id}.txt` } },
    };
  }

  it('writes what the worker has room for leased and hands it over, the rest due now; a redelivered event hands nothing', async () => {
    const handed: Array<{ environment: Environment; endpoint: EndpointRow; rows: DeliveryRow[] }> = [];
    let woken = 0;
    const handOff: DeliveryHandOff = {
      room: (id, granted) => (id === endpointId ? Math.max(0, 2 - granted) : 0),
      leaseMs: () => 600_000,
      adopt: (environment, endpoint, rows) => handed.push({ environment, endpoint, rows }),
      wake: () => {
        woken += 1;
      },
    };
    const consumer = webhooksConsumer(server.app.databases, handOff);
    assert.ok(consumer.batch);
    const events = [fileEvent(), fileEvent(), fileEvent()];
    await consumer.handle(events);

    assert.equal(handed.length, 1);
    const [first] = handed;
    assert.equal(first?.endpoint.id, endpointId);
    assert.ok(first?.endpoint.secret.length, 'the whole endpoint, secrets included, for signing');
    assert.deepEqual(
      first?.rows.map((row) => [row.event_id, row.attempt, row.status, row.first_failed_at]),
      events.slice(0, 2).map((event) => [event.event_id, 0, 'pending', null]),
    );
    assert.equal(woken, 1, 'one written due now: the worker is woken for it');

    const db = server.app.databases.environments.test;
    const rows = async () =>
      (
        await sql<{ id: string; event_id: string; status: string; leased: boolean }>`
          select id, event_id, status, next_attempt_at > clock_timestamp() + interval '5 minutes' as leased
          from webhooks.delivery where event_id = any(${events.map((e) => e.event_id)}::text[]) order by event_id`.execute(db)
      ).rows;
    const written = await rows();
    assert.equal(written.length, 3);
    const handedIds = new Set(first?.rows.map((row) => row.id));
    for (const row of written) assert.equal(row.leased, handedIds.has(row.id), `${row.event_id}: leased exactly when handed`);

    // The one left due is the server's own worker's to claim and send; the leased ones it leaves alone.
    const third = events[2]?.event_id;
    await until(async () => (await rows()).find((row) => row.event_id === third)?.status === 'succeeded', 'the due delivery claimed and sent', 15_000);
    assert.deepEqual(
      receiver.received.map((r) => r.headers['webhook-id']),
      [third],
    );
    assert.ok((await rows()).filter((row) => handedIds.has(row.id)).every((row) => row.status === 'pending' && row.leased));

    // Redelivered (a consumer that failed after its writes): nothing new is written or handed.
    handed.length = 0;
    await consumer.handle(events);
    assert.equal(handed.length, 1);
    assert.equal(handed[0]?.rows.length, 0);
    assert.equal((await rows()).length, 3);
  });
});
