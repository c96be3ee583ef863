import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import pino from 'pino';
import { OutboxBus } from '../src/adapters/bus/outbox.ts';
import type { Db } from '../src/adapters/db/pg.ts';
import type { BusEvent } from '../src/core/events.ts';
import { lockSubject } from '../src/core/ports.ts';
import { startServer, type TestServer } from './helpers/server.ts';

const silent = pino({ level: 'silent' });
const TENANT = 'ten_outbox_test';

async function until(condition: () => boolean | Promise<boolean>, what: string, limitMs = 60_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** One writer transaction: lock the subject first (as the files service does), bump its sequence, append the event. */
async function writeEvent(db: Db, bus: OutboxBus, key: string, holdMs = 0): Promise<number> {
  return db.transaction().execute(async (trx) => {
    await lockSubject(trx, `subject:${key}`);
    const row = await sql<{ seq: number }>`
      update outbox_test_subject set seq = seq + 1 where key = ${key} returning seq`.execute(trx);
    const seq = row.rows[0]?.seq as number;
    if (holdMs) await new Promise((resolve) => setTimeout(resolve, holdMs));
    await bus.append(trx, 'test', { type: 'Test_event', tenant_id: TENANT, actor: { type: 'system', id: 'test' }, data: { key, seq } });
    return seq;
  });
}

describe('transactional outbox', () => {
  let server: TestServer;
  let db: Db;
  before(async () => {
    server = await startServer();
    db = server.app.databases.environments.test;
    await sql`create table outbox_test_subject (key text primary key, seq int not null default 0)`.execute(db);
    await sql`insert into outbox_test_subject (key) select 'k' || g from generate_series(0, 3) g`.execute(db);
  });
  after(async () => server?.close());

  it('never skips an event whose transaction got a smaller id but committed later', async () => {
    const bus = new OutboxBus(server.app.databases, silent, { pollMs: 100 });
    const seen: BusEvent[] = [];
    bus.consume('late-commit', async (event) => void seen.push(event), { types: ['Late_event'] });
    await bus.start();
    try {
      // Transaction A appends first (smaller outbox id) and stays open; B appends and commits.
      let releaseA!: () => void;
      const aMayCommit = new Promise<void>((resolve) => (releaseA = resolve));
      let aAppended!: () => void;
      const aHasAppended = new Promise<void>((resolve) => (aAppended = resolve));
      const a = db.transaction().execute(async (trx) => {
        await bus.append(trx, 'test', { type: 'Late_event', tenant_id: TENANT, actor: { type: 'system', id: 'a' }, data: { who: 'A' } });
        aAppended();
        await aMayCommit;
      });
      await aHasAppended;
      await db.transaction().execute(async (trx) => {
        await bus.append(trx, 'test', { type: 'Late_event', tenant_id: TENANT, actor: { type: 'system', id: 'b' }, data: { who: 'B' } });
      });
      // Give the consumer several polls; a reader keeping `id > last_seen` would deliver B now and skip A forever.
      await new Promise((resolve) => setTimeout(resolve, 600));
      assert.deepEqual(seen.map((e) => e.data.who), [], 'nothing is delivered while an older writer is still open');
      releaseA();
      await a;
      await until(() => seen.length >= 2, 'both events');
      assert.deepEqual(seen.map((e) => e.data.who).sort(), ['A', 'B']);
    } finally {
      await bus.close();
    }
  });

  it("is not held back by a writer left open in another database of the server (nor by another installation's)", async () => {
    const bus = new OutboxBus(server.app.databases, silent, { pollMs: 100 });
    const seen: BusEvent[] = [];
    bus.consume('foreign-writer', async (event) => void seen.push(event), { types: ['Foreign_event'] });
    await bus.start();
    // A transaction with an id of its own, on the control database (another database of the same server), left open.
    let release!: () => void;
    const mayEnd = new Promise<void>((resolve) => (release = resolve));
    let opened!: () => void;
    const isOpen = new Promise<void>((resolve) => (opened = resolve));
    const foreign = server.app.databases.control.transaction().execute(async (trx) => {
      await sql`select pg_current_xact_id()`.execute(trx);
      opened();
      await mayEnd;
    });
    try {
      await isOpen;
      await db.transaction().execute(async (trx) => {
        await bus.append(trx, 'test', { type: 'Foreign_event', tenant_id: TENANT, actor: { type: 'system', id: 'test' }, data: { n: 1 } });
      });
      // The cluster's xmin is the open transaction's: a reader bounded by it would wait for as long as it stays open.
      await until(() => seen.length === 1, 'the event, with the foreign writer still open', 10_000);
      assert.deepEqual(seen.map((e) => e.data.n), [1]);
      // readSince (the replay of notifications) is bounded the same way.
      const replayed = await bus.readSince('test', null, 1000);
      assert.ok(replayed?.some((event) => event.type === 'Foreign_event'), 'readSince sees it too');
    } finally {
      release();
      await foreign;
      await bus.close();
    }
  });

  it('delivers every event of concurrent writers, in commit order per key', async () => {
    const bus = new OutboxBus(server.app.databases, silent, { pollMs: 100 });
    const seen: BusEvent[] = [];
    bus.consume('concurrent', async (event) => void seen.push(event), { types: ['Test_event'] });
    await bus.start();
    try {
      const writers = 8;
      const perWriter = 40;
      const committed: string[] = [];
      await Promise.all(
        Array.from({ length: writers }, async (_, w) => {
          for (let i = 0; i < perWriter; i++) {
            const key = `k${(w + i) % 4}`;
            const seq = await writeEvent(db, bus, key, i % 7 === 0 ? 15 : 0);
            committed.push(`${key}:${seq}`);
          }
        }),
      );
      await until(() => new Set(seen.map((e) => e.event_id)).size >= writers * perWriter, 'all events');
      const unique = new Map(seen.map((e) => [e.event_id, e]));
      assert.equal(unique.size, writers * perWriter, 'every committed event arrives');
      assert.deepEqual([...unique.values()].map((e) => `${e.data.key}:${e.data.seq}`).sort(), committed.sort());
      const lastSeq = new Map<string, number>();
      for (const event of unique.values()) {
        const key = event.data.key as string;
        const seq = event.data.seq as number;
        assert.equal(seq, (lastSeq.get(key) ?? 0) + 1, `events of ${key} arrive in commit order`);
        lastSeq.set(key, seq);
      }
    } finally {
      await bus.close();
    }
  });

  it('hands a batch consumer many events at once, and sets a poison event aside alone when a batch fails', async () => {
    const writer = new OutboxBus(server.app.databases, silent);
    for (let i = 0; i < 30; i++) {
      await db.transaction().execute((trx) =>
        writer.append(trx, 'test', { type: 'Batch_event', tenant_id: TENANT, actor: { type: 'system', id: 'test' }, data: { n: i, poison: i === 17 } }),
      );
    }
    const bus = new OutboxBus(server.app.databases, silent, { pollMs: 100, retryBaseMs: 1 });
    const batchSizes: number[] = [];
    const handled: number[] = [];
    bus.consumeBatch(
      'batcher',
      async (events) => {
        batchSizes.push(events.length);
        if (events.some((event) => event.data.poison)) throw new Error('poison');
        handled.push(...events.map((event) => event.data.n as number));
      },
      { types: ['Batch_event'], maxAttempts: 2 },
    );
    await bus.start();
    try {
      await until(async () => (await bus.status('batcher')).find((s) => s.environment === 'test')?.deadLetters === 1, 'the poison event to be set aside');
      await until(() => handled.length === 29, 'the other 29 events');
    } finally {
      await bus.close();
    }
    assert.ok(batchSizes[0] !== undefined && batchSizes[0] > 1, 'the backlog arrived as a batch');
    assert.deepEqual(handled, Array.from({ length: 30 }, (_, i) => i).filter((i) => i !== 17), 'every other event, once, in order');
    const dead = await sql<{ n: number }>`select (o.data->>'n')::int as n from bus.dead_letter d join bus.outbox o on o.id = d.event_id where d.consumer = 'batcher'`.execute(db);
    assert.deepEqual(dead.rows.map((row) => row.n), [17]);
  });

  it('concurrent writers while the consumer is killed and restarted mid-stream: every event once after dedupe, in commit order per key', async () => {
    const keys = ['kill0', 'kill1', 'kill2', 'kill3'];
    await sql`insert into outbox_test_subject (key) select unnest(${keys}::text[])`.execute(db);
    const writer = new OutboxBus(server.app.databases, silent);
    const logFile = path.join(server.dataDir, 'consumer.log');
    const fixture = path.join(import.meta.dirname, 'fixtures', 'outbox-consumer.ts');
    const run = () =>
      spawn(process.execPath, ['--import', 'tsx', fixture, server.app.databases.controlUrl, logFile, 'killable'], { stdio: ['ignore', 'pipe', 'inherit'] });
    // Read while a consumer appends: only whole lines count (the last may be half written).
    const lines = (): Array<{ event_id: string; key: string; seq: number }> =>
      (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').split('\n').slice(0, -1).map((l) => JSON.parse(l)) : []).filter((l) => keys.includes(l.key));
    const kill = async (child: ChildProcess) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    };
    let expectedIds = new Set<string>();

    // Four writers at once, each holding its transaction open a little, so commits interleave
    // and outbox ids commit out of order. They keep writing until the consumer has been
    // killed twice, so both kills land mid-stream.
    let kills = 0;
    let consumer = run();
    try {
      const writers = Promise.all(
        [0, 1, 2, 3].map(async (w) => {
          for (let i = 0; kills < 2 || i < 60; i++) {
            await writeEvent(db, writer, keys[(w + i) % keys.length] as string, (w * 7 + i) % 4);
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
        }),
      );
      for (const more of [40, 40]) {
        const target = lines().length + more;
        await until(() => lines().length >= target, `the consumer to deliver ${more} more events`);
        await kill(consumer);
        kills++;
        consumer = run();
      }
      await writers;
      const expected = await sql<{ id: number }>`select id from bus.outbox where type = 'Test_event' and data->>'key' like 'kill%'`.execute(db);
      expectedIds = new Set(expected.rows.map((r) => `evt_${String(r.id).padStart(12, '0')}`));
      await until(() => {
        const seen = new Set(lines().map((l) => l.event_id));
        return [...expectedIds].every((id) => seen.has(id));
      }, `the restarted consumer to catch up (${expectedIds.size} events)`, 120_000);
      // Anything else still to come would be a duplicate or a stray: give it a moment to show.
      await new Promise((resolve) => setTimeout(resolve, 500));
    } finally {
      await kill(consumer);
    }

    const firstSeen = new Map<string, { key: string; seq: number }>();
    for (const line of lines()) if (!firstSeen.has(line.event_id)) firstSeen.set(line.event_id, line);
    assert.deepEqual(new Set(firstSeen.keys()), expectedIds, 'every event, none invented, once after dedupe');
    for (const key of keys) {
      const seqs = [...firstSeen.values()].filter((l) => l.key === key).map((l) => l.seq);
      assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), `${key}: delivered in commit order, no gap`);
    }
    assert.ok(lines().length >= firstSeen.size, 'redeliveries after a kill are allowed (at least once), dedupe absorbs them');
  });
});
