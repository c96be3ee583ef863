import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { RELAY_CONSUMER } from '../../src/adapters/bus/nats-relay.ts';
import type { Environment } from '../../src/core/principal.ts';
import { until, uploadRaw } from '../helpers/files.ts';
import { startInstallation } from '../helpers/installation.ts';
import { type PrivateNats, startPrivateNats, streamMessageIds } from '../helpers/nats.ts';
import { startServer, type TestServer } from '../helpers/server.ts';

/**
 * The outbox relayed to NATS JetStream (issue 15, first part), against a nats-server of the
 * test's own, which the fault test kills -9 and starts again. PostgreSQL stays the source of
 * truth: what the outbox holds is what each stream must hold, once each, in commit order.
 */
type App = Pick<TestServer, 'app'>;

async function outboxIds(server: App, environment: Environment): Promise<string[]> {
  const events = (await server.app.bus.readSince(environment, null, 100_000)) ?? [];
  return events.map((event) => event.event_id);
}

async function relayed(server: App, limitMs = 120_000): Promise<void> {
  await until(
    async () => (await server.app.bus.status(RELAY_CONSUMER)).every((status) => status.pending === 0),
    'the relay to have published every event',
    limitMs,
  );
}

async function assertStreamsMatchOutbox(server: App, nats: PrivateNats, prefix: string): Promise<void> {
  for (const environment of ['test', 'live'] as const) {
    const inStream = await streamMessageIds(nats.url, prefix, environment);
    assert.equal(new Set(inStream).size, inStream.length, `${environment}: no event twice in the stream`);
    assert.deepEqual(inStream, await outboxIds(server, environment), `${environment}: every committed event, once, in commit order`);
  }
}

describe('outbox relayed to NATS JetStream', () => {
  let nats: PrivateNats;
  let server: TestServer;
  const prefix = `t${randomBytes(4).toString('hex')}`;
  before(async () => {
    nats = await startPrivateNats();
    server = await startServer({ NATS_URL: nats.url, BANTU_NATS_PREFIX: prefix });
  });
  after(async () => {
    await server?.close();
    await nats?.close();
  });

  it("every committed event reaches its environment's stream once, with its event id as Nats-Msg-Id", async () => {
    for (let i = 0; i < 10; i++) assert.equal((await uploadRaw(server, server.keys.test.account_key, `t${i}`, { name: `t${i}.txt` })).status, 201);
    for (let i = 0; i < 3; i++) assert.equal((await uploadRaw(server, server.keys.live.account_key, `l${i}`, { name: `l${i}.txt` })).status, 201);
    await relayed(server);
    assert.equal((await streamMessageIds(nats.url, prefix, 'test')).length, 10);
    assert.equal((await streamMessageIds(nats.url, prefix, 'live')).length, 3);
    await assertStreamsMatchOutbox(server, nats, prefix);
  });

  it('nats-server killed -9 during 300 updates, then started again: every write succeeds, /readyz says NATS is down meanwhile, and the relay catches up with nothing lost or doubled', async () => {
    const key = server.keys.test.account_key;
    const files: string[] = [];
    for (let i = 0; i < 4; i++) {
      const created = await uploadRaw(server, key, `start ${i}`, { name: `busy-${i}.txt` });
      assert.equal(created.status, 201);
      files.push(created.json.id);
    }
    let done = 0;
    let downSeen = false;
    const writer = async (id: string) => {
      for (let i = 0; i < 75; i++) {
        const answer = await server.request('PUT', `/v1/files/${id}/content`, { auth: key, body: `v${i}`, headers: { 'content-type': 'text/plain' } });
        assert.equal(answer.status, 200, `a write while NATS is away still succeeds: ${answer.text}`);
        done += 1;
      }
    };
    const writing = Promise.all(files.map(writer));
    await until(() => done >= 80, '80 updates');
    await nats.kill('SIGKILL');
    await until(async () => {
      const ready = await server.request('GET', '/readyz');
      downSeen = ready.status === 503 && ready.json.dependencies.nats?.status === 'down';
      return downSeen || done >= 300;
    }, 'readiness to report NATS down');
    await until(() => done >= 200, '200 updates');
    await nats.start();
    await writing;
    assert.ok(downSeen, '/readyz reported NATS down while it was');
    await relayed(server);
    await assertStreamsMatchOutbox(server, nats, prefix);
  });
});

describe('two processes of one installation relaying to one NATS', () => {
  it('one relays at a time, and no event is in the stream twice', async () => {
    const nats = await startPrivateNats();
    const prefix = `t${randomBytes(4).toString('hex')}`;
    const installation = await startInstallation(2, { NATS_URL: nats.url, BANTU_NATS_PREFIX: prefix });
    try {
      const [a, b] = installation.servers as [TestServer, TestServer];
      const key = a.keys.test.account_key;
      const writes = Array.from({ length: 40 }, (_, i) => uploadRaw(i % 2 ? a : b, key, `w${i}`, { name: `w${i}.txt` }));
      for (const answer of await Promise.all(writes)) assert.equal(answer.status, 201);
      await relayed(a);
      await assertStreamsMatchOutbox(a, nats, prefix);
      // Exactly one of the two leads the relay.
      const leaders = [a, b].filter((server) => server.app.isLeading('nats-relay'));
      assert.equal(leaders.length, 1);
    } finally {
      await installation.close();
      await nats.close();
    }
  });
});
