import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect as connectNats } from '@nats-io/transport-node';
import { sql } from 'kysely';
import { RELAY_CONSUMER, streamName } from '../../src/adapters/bus/nats-relay.ts';
import { eventIdOf } from '../../src/adapters/bus/outbox.ts';
import { until, uploadRaw } from '../helpers/files.ts';
import { type PrivateNats, startPrivateNats, streamMessageIds } from '../helpers/nats.ts';
import { startServer, type TestServer } from '../helpers/server.ts';
import { connect, connected, emitWithAck, type Inbox } from '../helpers/sockets.ts';

/**
 * Issue 15's fault test: the events go through NATS JetStream (a nats-server of the test's
 * own) to the backup worker, and nats-server is killed -9 during 1,000 updates, then started
 * again on its store. Afterwards every version is backed up exactly once, a socket that came
 * back with `since` while NATS was down has every event once (after dedupe) in commit order
 * per file, and the outbox holds nothing unrelayed.
 */
const FILES = 4;
const UPDATES_PER_FILE = 250;

describe('NATS JetStream bus: nats-server killed -9 during 1,000 updates', () => {
  let nats: PrivateNats;
  let server: TestServer;
  const prefix = `t${randomBytes(4).toString('hex')}`;
  const sockets: Inbox[] = [];
  before(async () => {
    nats = await startPrivateNats();
    // A short ack wait: after the crash the worker waits it out before fetching again.
    server = await startServer({ NATS_URL: nats.url, BANTU_NATS_PREFIX: prefix, BANTU_NATS_ACK_WAIT_SECONDS: '3' });
  });
  after(async () => {
    for (const inbox of sockets) inbox.close();
    await server?.close();
    await nats?.close();
  });

  async function subscribe(since?: string): Promise<Inbox> {
    const inbox = connect(server);
    sockets.push(inbox);
    await connected(inbox.socket);
    const ack = await emitWithAck(inbox.socket, 'Admin_connect', { key: server.keys.test.account_key, ...(since ? { since } : {}) });
    assert.deepEqual(ack, { ok: true, user_id: null });
    return inbox;
  }

  /** The test environment's file events, as the outbox holds them, in delivery order. */
  async function fileEvents(): Promise<string[]> {
    const rows = await sql<{ id: number }>`select id from bus.outbox where type like 'File_%' order by xid, id`.execute(server.app.databases.environments.test);
    return rows.rows.map((row) => eventIdOf(row.id));
  }

  /** Entries of the backup history by event id: more than one for an id would be a double backup. */
  async function backedUp(): Promise<Map<string, number>> {
    const rows = await sql<{ event_id: string; n: number }>`select event_id, count(*)::int as n from backup.version group by event_id`.execute(
      server.app.databases.environments.test,
    );
    return new Map(rows.rows.map((row) => [row.event_id, row.n]));
  }

  it('every version backed up exactly once, a since subscriber gets every event once in commit order per file, nothing left unrelayed', async () => {
    const key = server.keys.test.account_key;
    const first = await subscribe();
    const files: string[] = [];
    for (let i = 0; i < FILES; i++) {
      const created = await uploadRaw(server, key, `start ${i}`, { name: `fault-${i}.txt` });
      assert.equal(created.status, 201);
      files.push(created.json.id);
    }
    let done = 0;
    const writer = async (id: string) => {
      for (let v = 2; v <= UPDATES_PER_FILE + 1; v++) {
        const answer = await server.request('PUT', `/v1/files/${id}/content`, { auth: key, body: `v${v}`, headers: { 'content-type': 'text/plain' } });
        assert.equal(answer.status, 200, `a write while NATS is away still succeeds: ${answer.text}`);
        done += 1;
      }
    };
    const writing = Promise.all(files.map(writer));

    await until(() => done >= 200, '200 updates', 300_000);
    await nats.kill('SIGKILL');
    let downSeen = false;
    await until(async () => {
      const ready = await server.request('GET', '/readyz');
      downSeen = ready.status === 503 && ready.json.dependencies.nats?.status === 'down';
      return downSeen || done >= FILES * UPDATES_PER_FILE;
    }, 'readiness to report NATS down', 300_000);
    // The socket drops while NATS is down and comes back with `since`.
    await until(() => done >= 350, '350 updates', 300_000);
    first.close();
    await until(() => done >= 400, '400 updates', 300_000);
    const lastSeen = first.events[first.events.length - 1]?.payload.event_id;
    assert.ok(lastSeen, 'the socket had events before it dropped');
    const second = await subscribe(lastSeen);
    await until(() => done >= 550, '550 updates', 300_000);
    await nats.start();
    await writing;
    assert.ok(downSeen, '/readyz reported NATS down while it was');

    const expected = await fileEvents();
    assert.equal(expected.length, FILES * (UPDATES_PER_FILE + 1));
    // Nothing left unrelayed, and the streams hold each event once, in commit order.
    await until(async () => (await server.app.bus.status(RELAY_CONSUMER)).every((status) => status.pending === 0), 'the relay to catch up', 300_000);
    const inStream = await streamMessageIds(nats.url, prefix, 'test');
    assert.deepEqual(inStream, (await server.app.bus.readSince('test', null, 100_000))?.map((event) => event.event_id));

    // Every version backed up exactly once, through JetStream.
    await until(async () => (await backedUp()).size >= expected.length, 'every version backed up', 300_000);
    await until(async () => (await server.app.bus.status('backup')).every((status) => status.pending === 0), "the backup's consumer to pass every event", 300_000);
    const counts = await backedUp();
    // It came through JetStream: the backup's durable consumer acknowledged the whole stream.
    const nc = await connectNats({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    const consumer = await jsm.consumers.info(streamName(prefix, 'test'), 'backup');
    assert.equal(consumer.ack_floor.stream_seq, inStream.length, "the backup's JetStream consumer acknowledged every message");
    assert.equal(consumer.num_pending + consumer.num_ack_pending, 0);
    await nc.close();
    assert.deepEqual([...counts.keys()].sort(), [...expected].sort(), 'the backup holds every version, and nothing else');
    assert.deepEqual([...counts.entries()].filter(([, n]) => n !== 1), [], 'no version twice');

    // The socket: what it saw before it dropped, then the replay and the live events after it.
    const last = expected[expected.length - 1] as string;
    await second.waitFor((event) => event.payload.event_id === last, 'the last event at the socket that came back', 120_000);
    const seen = new Map<string, { file: string; version: number }>();
    for (const event of [...first.events, ...second.events]) seen.set(event.payload.event_id, { file: event.payload.file.id, version: event.payload.file.version });
    assert.deepEqual([...seen.keys()].sort(), [...expected].sort(), 'every event once after dedupe');
    for (const id of files) {
      const versions = [...seen.values()].filter((event) => event.file === id).map((event) => event.version);
      assert.deepEqual(versions, Array.from({ length: UPDATES_PER_FILE + 1 }, (_, i) => i + 1), `${id}: every version, in commit order`);
    }
  });
});
