import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect as connectNats } from '@nats-io/transport-node';
import { sql } from 'kysely';
import { streamName } from '../../src/adapters/bus/nats-relay.ts';
import { eventIdOf } from '../../src/adapters/bus/outbox.ts';
import { until, uploadRaw } from '../helpers/files.ts';
import { type Installation, startInstallation } from '../helpers/installation.ts';
import { type PrivateNats, startPrivateNats } from '../helpers/nats.ts';
import type { TestServer } from '../helpers/server.ts';
import { connect, connected, emitWithAck, type Inbox } from '../helpers/sockets.ts';

/**
 * Issue 15: with the NATS driver, each notifications instance reads the live events from
 * JetStream through an ordered consumer of its own. Two instances of one installation (one
 * database, a nats-server of the test's own): sockets on each get every event they may see,
 * exactly once, in commit order per file, also across a kill -9 of nats-server while they
 * stay connected.
 */
const FILES = 3;

describe('notifications on the NATS driver: two instances, each with its own JetStream consumer', () => {
  let nats: PrivateNats;
  let installation: Installation;
  let servers: TestServer[];
  const prefix = `t${randomBytes(4).toString('hex')}`;
  const sockets: Inbox[] = [];
  before(async () => {
    nats = await startPrivateNats();
    installation = await startInstallation(2, { NATS_URL: nats.url, BANTU_NATS_PREFIX: prefix });
    servers = installation.servers;
  });
  after(async () => {
    for (const inbox of sockets) inbox.close();
    await installation?.close();
    await nats?.close();
  });

  /** Two admin sockets of the test environment on each instance. */
  async function subscribeAll(): Promise<Inbox[]> {
    const opened: Inbox[] = [];
    for (const server of servers) {
      for (let i = 0; i < 2; i++) {
        const inbox = connect(server);
        sockets.push(inbox);
        opened.push(inbox);
        await connected(inbox.socket);
        assert.deepEqual(await emitWithAck(inbox.socket, 'Admin_connect', { key: server.keys.test.account_key }), { ok: true, user_id: null });
      }
    }
    return opened;
  }

  /** The test environment's file events after `afterId` (an outbox id), as the outbox holds them, in delivery order. */
  async function fileEvents(afterId: number): Promise<string[]> {
    const rows = await sql<{ id: number }>`select id from bus.outbox where type like 'File_%' and id > ${afterId} order by xid, id`.execute(
      (servers[0] as TestServer).app.databases.environments.test,
    );
    return rows.rows.map((row) => eventIdOf(row.id));
  }

  async function lastOutboxId(): Promise<number> {
    const rows = await sql<{ id: number | null }>`select max(id)::int as id from bus.outbox`.execute((servers[0] as TestServer).app.databases.environments.test);
    return rows.rows[0]?.id ?? 0;
  }

  /** FILES files made, then `updates` updates of each, written through both instances in turn. */
  async function write(updates: number, onProgress?: (done: number) => Promise<void>): Promise<string[]> {
    const key = (servers[0] as TestServer).keys.test.account_key;
    const files: string[] = [];
    for (let i = 0; i < FILES; i++) {
      const created = await uploadRaw(servers[i % 2] as TestServer, key, `start ${i}`, { name: `n-${randomBytes(3).toString('hex')}.txt` });
      assert.equal(created.status, 201);
      files.push(created.json.id);
    }
    let done = 0;
    const writer = async (id: string, index: number) => {
      for (let v = 2; v <= updates + 1; v++) {
        const server = servers[(index + v) % 2] as TestServer;
        const answer = await server.request('PUT', `/v1/files/${id}/content`, { auth: key, body: `v${v}`, headers: { 'content-type': 'text/plain' } });
        assert.equal(answer.status, 200, answer.text);
        done += 1;
        await onProgress?.(done);
      }
    };
    await Promise.all(files.map(writer));
    return files;
  }

  /** Every socket: every expected event exactly once, and each file's versions 1..updates+1 in order. */
  async function assertEveryEventOnce(inboxes: Inbox[], expected: string[], files: string[], updates: number): Promise<void> {
    const last = expected[expected.length - 1] as string;
    for (const [n, inbox] of inboxes.entries()) {
      await inbox.waitFor((event) => event.payload.event_id === last, `the last event at socket ${n}`, 120_000);
      assert.ok(inbox.socket.connected, `socket ${n} stayed connected`);
      const ids = inbox.events.map((event) => event.payload.event_id);
      assert.deepEqual([...ids].sort(), [...expected].sort(), `socket ${n}: every event, exactly once`);
      for (const id of files) {
        const versions = inbox.events.filter((event) => event.payload.file.id === id).map((event) => event.payload.file.version);
        assert.deepEqual(versions, Array.from({ length: updates + 1 }, (_, i) => i + 1), `socket ${n}, ${id}: every version, in commit order`);
      }
    }
  }

  it('sockets on both instances get every event they may see, exactly once, in commit order per file, through JetStream', async () => {
    const from = await lastOutboxId();
    const inboxes = await subscribeAll();
    const files = await write(30);
    const expected = await fileEvents(from);
    assert.equal(expected.length, FILES * 31);
    await assertEveryEventOnce(inboxes, expected, files, 30);
    // Each instance reads each environment's stream through an ordered consumer of its own.
    const nc = await connectNats({ servers: nats.url });
    try {
      const jsm = await jetstreamManager(nc);
      const consumers = await jsm.consumers.list(streamName(prefix, 'test')).next();
      const ordered = consumers.filter((info) => info.config.durable_name === undefined);
      assert.equal(ordered.length, 2, `one ordered consumer per instance: ${consumers.map((info) => info.name).join(', ')}`);
    } finally {
      await nc.close();
    }
    for (const inbox of inboxes) inbox.close();
  });

  it('nats-server killed -9 and started again while the sockets stay connected: afterwards every socket has every event exactly once, in order', async () => {
    const from = await lastOutboxId();
    const inboxes = await subscribeAll();
    let killed = false;
    let restarted = false;
    const files = await write(60, async (done) => {
      // Killed a third of the way, started again at two thirds: writes go on meanwhile.
      if (!killed && done >= 60) {
        killed = true;
        await nats.kill('SIGKILL');
      } else if (killed && !restarted && done >= 120) {
        restarted = true;
        await nats.start();
      }
    });
    assert.ok(killed && restarted);
    const expected = await fileEvents(from);
    assert.equal(expected.length, FILES * 61);
    await until(async () => inboxes.every((inbox) => inbox.events.length >= expected.length), 'every event at every socket', 180_000);
    await assertEveryEventOnce(inboxes, expected, files, 60);
    for (const inbox of inboxes) inbox.close();
  });
});
