import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { describe, it } from 'node:test';
import type { QueryExecutorProvider } from 'kysely';
import type { BusEvent, NewEvent } from '../../core/events.ts';
import { type EventBus, lockSubject, PoisonEventError, type TransactionHandle } from '../../core/ports.ts';
import type { Environment } from '../../core/principal.ts';

/**
 * The contract every EventBus driver passes (the outbox now, NATS later). Each test opens a
 * fixture: a bus on databases of its own, with no events, cursors or dead letters, not
 * started yet; the test registers its consumers, starts the bus, and closes the fixture.
 * Delivery is at least once, so the checks dedupe by `event_id` unless a test says why not.
 */
export interface BusHarness {
  open(): Promise<BusFixture>;
  /** The first retry wait of the buses `open` makes, in milliseconds (retries double from it, up to at least 8 times it). */
  retryBaseMs: number;
}

export interface BusFixture {
  /** The bus in use; `restart` replaces it. */
  readonly bus: EventBus;
  /** Runs `work` as a writer transaction of the environment's database: it commits when `work` resolves, rolls back when it throws. */
  write<T>(environment: Environment, work: (trx: TransactionHandle) => Promise<T>): Promise<T>;
  /** Closes the bus, as a process stopping does, and opens a new one on the same databases, not started. */
  restart(): Promise<EventBus>;
  /** Closes the bus and removes its databases. */
  close(): Promise<void>;
}

const TENANT = 'ten_bus_contract';
const OTHER_TENANT = 'ten_bus_contract_other';
const actor = { type: 'system', id: 'bus-contract' } as const;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition: () => boolean | Promise<boolean>, what: string, limitMs = 15_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

function newEvent(type: string, data: Record<string, unknown>, tenant_id = TENANT, owner_id: string | null = null): NewEvent {
  return { type, tenant_id, actor, owner_id, data };
}

/** Each event once, in the order first seen. */
function firsts(events: BusEvent[]): BusEvent[] {
  return [...new Map(events.map((event) => [event.event_id, event])).values()];
}

const ids = (events: BusEvent[]) => events.map((event) => event.event_id);

export function busContract(driver: string, harness: BusHarness): void {
  /** Opens a fixture for `work` and closes it, whatever happens. */
  async function withBus(work: (fixture: BusFixture) => Promise<void>): Promise<void> {
    const fixture = await harness.open();
    try {
      await work(fixture);
    } finally {
      await fixture.close();
    }
  }

  /** One committed writer transaction that appends `event`. */
  const append = (fixture: BusFixture, environment: Environment, event: NewEvent) =>
    fixture.write(environment, (trx) => fixture.bus.append(trx, environment, event));

  async function deadLetters(bus: EventBus, consumer: string): Promise<number> {
    return (await bus.status(consumer)).reduce((sum, status) => sum + status.deadLetters, 0);
  }

  describe(`EventBus contract: ${driver}`, () => {
    it('an ephemeral consumer gets what commits from its start on, and after a restart nothing again but what is new', async () => {
      await withBus(async (fixture) => {
        // A writer that began before the early event and commits after the start: its event is
        // new to the consumer, and while it runs it holds the oldest running transaction back,
        // behind the early event (as any long transaction on the server would).
        let appended = () => {};
        let release = () => {};
        const inserted = new Promise<void>((resolve) => (appended = resolve));
        const gate = new Promise<void>((resolve) => (release = resolve));
        const held = fixture.write('test', async (trx) => {
          const event = await fixture.bus.append(trx, 'test', newEvent('Held', { n: -1 }));
          appended();
          await gate;
          return event;
        });
        await inserted;
        await append(fixture, 'test', newEvent('Early', { n: 0 }));
        const got: BusEvent[] = [];
        fixture.bus.consume('present', async (event) => void got.push(event), { ephemeral: true, lowLatency: true });
        await fixture.bus.start();
        release();
        const during: BusEvent[] = [await held];
        for (let i = 1; i <= 5; i++) during.push(await append(fixture, 'test', newEvent('During', { n: i })));
        await until(() => firsts(got).length >= during.length, 'the events appended after the start');
        await sleep(100);
        assert.deepEqual(ids(firsts(got)), ids(during), 'the event from before the start is not delivered');

        const bus = await fixture.restart();
        const after: BusEvent[] = [];
        bus.consume('present', async (event) => void after.push(event), { ephemeral: true });
        await bus.start();
        const late = await append(fixture, 'test', newEvent('Late', { n: 6 }));
        await until(() => after.some((event) => event.event_id === late.event_id), 'the event appended after the restart');
        await sleep(100);
        assert.deepEqual(ids(firsts(after)), [late.event_id], 'nothing replayed from before the restart');
      });
    });

    it("appends inside the writer's transaction: nothing is visible before it commits, nothing ever after a rollback", async () => {
      await withBus(async (fixture) => {
        const seen: BusEvent[] = [];
        fixture.bus.consume('visibility', async (event) => void seen.push(event));
        await fixture.bus.start();

        let commit!: () => void;
        const mayCommit = new Promise<void>((resolve) => (commit = resolve));
        let appended!: (event: BusEvent) => void;
        const hasAppended = new Promise<BusEvent>((resolve) => (appended = resolve));
        const writing = fixture.write('test', async (trx) => {
          appended(await fixture.bus.append(trx, 'test', newEvent('Visibility', { n: 1 })));
          await mayCommit;
        });
        const first = await hasAppended;
        try {
          assert.equal(first.environment, 'test');
          assert.equal(first.type, 'Visibility');
          assert.equal(first.tenant_id, TENANT);
          assert.ok(first.event_id.length > 0 && !Number.isNaN(Date.parse(first.occurred_at)));
          // Several polls' worth: a bus that published on append would have delivered by now.
          await sleep(400);
          // (Copies, here and below: the assertion narrows what it is given to its expected type.)
          assert.deepEqual([...seen], [], 'no consumer gets an event whose transaction is still open');
          assert.deepEqual(await fixture.bus.readSince('test', null, 10), [], 'readSince does not show it either');
        } finally {
          commit(); // even when an assertion failed: an open transaction would hold the fixture's close
          await writing;
        }
        await until(() => seen.length > 0, 'the committed event');
        assert.deepEqual(seen[0], first, 'delivered as append returned it');

        await assert.rejects(
          fixture.write('test', async (trx) => {
            await fixture.bus.append(trx, 'test', newEvent('Visibility', { n: 2 }));
            throw new Error('roll back');
          }),
          /roll back/,
        );
        const third = await append(fixture, 'test', newEvent('Visibility', { n: 3 }));
        await until(() => seen.some((event) => event.event_id === third.event_id), 'the event after the rollback');
        await sleep(200);
        assert.deepEqual(firsts(seen).map((event) => event.data.n), [1, 3], 'the rolled back event never arrives');
        assert.deepEqual((await fixture.bus.readSince('test', null, 10))?.map((event) => event.data.n), [1, 3]);
      });
    });

    it('appends with appendStatement as with append: the same event to a consumer, reading or from the notification, and none after a rollback', async () => {
      await withBus(async (fixture) => {
        const read: BusEvent[] = [];
        const ahead: BusEvent[] = [];
        fixture.bus.consume('statement-read', async (event) => void read.push(event));
        fixture.bus.consume('statement-ahead', async (event) => void ahead.push(event), { lowLatency: true });
        await fixture.bus.start();
        const run = (trx: TransactionHandle, n: number) =>
          fixture.bus.appendStatement('test', newEvent('Statement', { n }, TENANT, 'usr_statement')).execute(trx as QueryExecutorProvider);
        await fixture.write('test', (trx) => run(trx, 1));
        await assert.rejects(
          fixture.write('test', async (trx) => {
            await run(trx, 2);
            throw new Error('roll back');
          }),
          /roll back/,
        );
        const last = await append(fixture, 'test', newEvent('Statement', { n: 3 }, TENANT, 'usr_statement'));
        await until(() => [read, ahead].every((got) => got.some((event) => event.event_id === last.event_id)), 'the appended events');
        for (const got of [read, ahead]) {
          assert.deepEqual(firsts(got).map((event) => event.data.n), [1, 3], 'the rolled back one never arrives');
          const [first] = firsts(got);
          assert.equal(first?.type, 'Statement');
          assert.equal(first?.owner_id, 'usr_statement');
          assert.equal(first?.environment, 'test');
        }
        assert.deepEqual(firsts(ahead)[0], firsts(read)[0], 'the same event, to the character, whichever way it came');
        assert.deepEqual((await fixture.bus.readSince('test', null, 10))?.[0], firsts(read)[0]);
      });
    });

    it('delivers every event at least once to each consumer, in its environment, from before the consumer started too', async () => {
      await withBus(async (fixture) => {
        const appended: BusEvent[] = [];
        const at = (i: number): Environment => (i % 3 === 0 ? 'live' : 'test');
        for (let i = 0; i < 4; i++) appended.push(await append(fixture, at(i), newEvent(i % 2 ? 'Odd' : 'Even', { n: i })));
        const seen = new Map<string, BusEvent[]>(['one', 'two', 'batch', 'even', 'fast'].map((name) => [name, []]));
        const got = (name: string) => seen.get(name) as BusEvent[];
        fixture.bus.consume('one', async (event) => void got('one').push(event));
        fixture.bus.consume('two', async (event) => void got('two').push(event));
        fixture.bus.consumeBatch('batch', async (events) => void got('batch').push(...events));
        fixture.bus.consume('even', async (event) => void got('even').push(event), { types: ['Even'] });
        // Delivered ahead of the read where the driver can (the outbox: from the NOTIFY): the same events, to the character.
        fixture.bus.consume('fast', async (event) => void got('fast').push(event), { lowLatency: true });
        await fixture.bus.start();
        for (let i = 4; i < 21; i++) appended.push(await append(fixture, at(i), newEvent(i % 2 ? 'Odd' : 'Even', { n: i })));

        // Event ids are per environment: an event is its environment and its id.
        const key = (event: BusEvent) => `${event.environment}/${event.event_id}`;
        const distinct = (events: BusEvent[]) => [...new Map(events.map((event) => [key(event), event])).values()];
        const sorted = (events: BusEvent[]) => [...events].sort((a, b) => key(a).localeCompare(key(b)));
        for (const name of ['one', 'two', 'batch', 'fast']) {
          await until(() => distinct(got(name)).length >= appended.length, `every event at ${name}`);
          assert.deepEqual(sorted(distinct(got(name))), sorted(appended), `${name}: every event, as appended, in its environment`);
        }
        // Each environment's last event is an Even one: by the time both arrived, any Odd one
        // would have too (an environment's events come in order; the two have no order between them).
        for (const environment of ['live', 'test'] as const) {
          const last = appended.filter((event) => event.environment === environment).pop() as BusEvent;
          assert.equal(last.type, 'Even');
          await until(() => got('even').some((event) => key(event) === key(last)), `the last Even event in ${environment}`);
        }
        assert.deepEqual(
          sorted(distinct(got('even'))),
          sorted(appended.filter((event) => event.type === 'Even')),
          'a consumer of some types gets those, all of them',
        );
      });
    });

    it('delivers the events of writers that lock the same subject in their commit order', async () => {
      await withBus(async (fixture) => {
        const seen: BusEvent[] = [];
        fixture.bus.consume('ordered', async (event) => void seen.push(event));
        await fixture.bus.start();
        const subjects = ['s0', 's1', 's2'];
        const counts = new Map<string, number>();
        const committed: string[] = [];
        const writers = 6;
        const perWriter = 15;
        await Promise.all(
          Array.from({ length: writers }, async (_, w) => {
            for (let i = 0; i < perWriter; i++) {
              const subject = subjects[(w + i) % subjects.length] as string;
              const seq = await fixture.write('test', async (trx) => {
                await lockSubject(trx, `bus-contract:${subject}`);
                // The lock is held until commit, so this count is the subject's commit order.
                const seq = (counts.get(subject) ?? 0) + 1;
                counts.set(subject, seq);
                if ((w + i) % 4 === 0) await sleep(5); // a younger writer of another subject appends first
                await fixture.bus.append(trx, 'test', newEvent('Ordered', { subject, seq }));
                if ((w + i) % 3 === 0) await sleep(5); // appended, committing late
                return seq;
              });
              committed.push(`${subject}:${seq}`);
            }
          }),
        );
        await until(() => firsts(seen).length >= writers * perWriter, 'every event');
        const delivered = firsts(seen);
        assert.deepEqual(delivered.map((event) => `${event.data.subject}:${event.data.seq}`).sort(), committed.sort(), 'every committed event, nothing else');
        for (const subject of subjects) {
          const seqs = delivered.filter((event) => event.data.subject === subject).map((event) => event.data.seq);
          assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), `${subject}: in commit order`);
        }
      });
    });

    it('keeps cursors across a restart: a new bus resumes after the last delivered event, skipping none, losing none', async () => {
      await withBus(async (fixture) => {
        const firstRun: BusEvent[] = [];
        fixture.bus.consume('durable', async (event) => void firstRun.push(event));
        await fixture.bus.start();
        const before: BusEvent[] = [];
        for (let i = 0; i < 5; i++) before.push(await append(fixture, 'test', newEvent('Durable', { n: i })));
        await until(() => firsts(firstRun).length >= 5, 'the first five events');
        // Once nothing is pending, the cursor is saved past them: a clean restart owes them no redelivery.
        await until(async () => (await fixture.bus.status('durable')).every((status) => status.pending === 0), 'the cursor to pass them');

        const bus = await fixture.restart();
        const whileDown: BusEvent[] = [];
        for (let i = 5; i < 8; i++) whileDown.push(await append(fixture, 'test', newEvent('Durable', { n: i })));
        const secondRun: BusEvent[] = [];
        bus.consume('durable', async (event) => void secondRun.push(event));
        await bus.start();
        const afterStart: BusEvent[] = [];
        for (let i = 8; i < 10; i++) afterStart.push(await append(fixture, 'test', newEvent('Durable', { n: i })));
        await until(() => firsts(secondRun).length >= 5, 'the five events after the restart');
        await sleep(300); // anything more would be an event from before the restart, again
        assert.deepEqual(ids(firsts(firstRun)), ids(before), 'the closed bus delivered nothing more');
        assert.deepEqual(ids(secondRun), ids([...whileDown, ...afterStart]), 'resumed right after the last delivered event');
      });
    });

    it('retries a failing handler with backoff until it passes', async () => {
      await withBus(async (fixture) => {
        const tries: number[] = [];
        const handled: string[] = [];
        fixture.bus.consume(
          'retrying',
          async (event) => {
            if (event.data.n === 'flaky') {
              tries.push(performance.now());
              if (tries.length <= 3) throw new Error('not yet');
            }
            handled.push(event.data.n as string);
          },
          { maxAttempts: 10 },
        );
        await fixture.bus.start();
        await append(fixture, 'test', newEvent('Retry', { n: 'flaky' }));
        await append(fixture, 'test', newEvent('Retry', { n: 'after' }));
        await until(() => handled.includes('flaky') && handled.includes('after'), 'both events handled');
        assert.equal(tries.length, 4, 'three failed tries, then the one that passed');
        const gaps = tries.slice(1).map((time, i) => time - (tries[i] as number));
        gaps.forEach((gap, i) => {
          const backoff = harness.retryBaseMs * 2 ** i;
          assert.ok(gap >= backoff - 2, `retry ${i + 1} came after ${gap.toFixed(1)} ms, before its backoff of ${backoff} ms`);
        });
        assert.equal(await deadLetters(fixture.bus, 'retrying'), 0, 'an event that passed is no dead letter');
      });
    });

    it("'poison-only': a failure that is not the event's keeps retrying past maxAttempts, holds later events back, and makes no dead letter", async () => {
      await withBus(async (fixture) => {
        let storeDown = true;
        let failures = 0;
        const handled: string[] = [];
        fixture.bus.consume(
          'patient',
          async (event) => {
            if (event.data.n === 'first' && storeDown) {
              failures++;
              throw new Error('the store is down');
            }
            handled.push(event.data.n as string);
          },
          { deadLetter: 'poison-only', maxAttempts: 2 },
        );
        await fixture.bus.start();
        await append(fixture, 'test', newEvent('Patient', { n: 'first' }));
        await append(fixture, 'test', newEvent('Patient', { n: 'second' }));
        await until(() => failures >= 5, 'more failures than maxAttempts');
        assert.deepEqual([...handled], [], 'the event behind it waits');
        assert.equal(await deadLetters(fixture.bus, 'patient'), 0, 'no dead letter for a failure that is not the event');
        storeDown = false;
        await until(() => handled.includes('second'), 'both events once the store is back');
        assert.deepEqual([...new Set(handled)], ['first', 'second'], 'in order');
        assert.equal(await deadLetters(fixture.bus, 'patient'), 0);
      });
    });

    it('sets a poison event aside as a dead letter after maxAttempts tries, never blocking the events behind it', async () => {
      await withBus(async (fixture) => {
        const tries = new Map<string, number>();
        const handled: Record<string, string[]> = { strict: [], lenient: [] };
        const handler = (name: string, fail: () => Error) => async (event: BusEvent) => {
          const key = `${name}:${event.data.n}`;
          tries.set(key, (tries.get(key) ?? 0) + 1);
          if (event.data.poison) throw fail();
          handled[name]?.push(event.data.n as string);
        };
        fixture.bus.consume('strict', handler('strict', () => new PoisonEventError('names nothing')), { deadLetter: 'poison-only', maxAttempts: 3 });
        // 'any-failure' (the default): any failure counts, a plain error too.
        fixture.bus.consume('lenient', handler('lenient', () => new Error('a bug')), { maxAttempts: 2 });
        await fixture.bus.start();
        for (const n of ['a', 'p', 'b', 'c']) await append(fixture, 'test', newEvent('Poison', { n, poison: n === 'p' }));
        for (const name of ['strict', 'lenient']) {
          await until(() => handled[name]?.includes('c') === true, `${name}: the events behind the poison one`);
          await until(async () => (await deadLetters(fixture.bus, name)) === 1, `${name}: the dead letter`);
          assert.deepEqual([...new Set(handled[name])], ['a', 'b', 'c'], `${name}: every other event, in order`);
        }
        await sleep(200);
        assert.equal(tries.get('strict:p'), 3, 'maxAttempts tries, then set aside for good');
        assert.equal(tries.get('lenient:p'), 2);
      });
    });

    it('redelivers dead letters on demand: one that passes is gone, one that fails stays with its new error', async () => {
      await withBus(async (fixture) => {
        const consumerTries = new Map<string, number>();
        fixture.bus.consume(
          'redeliver',
          async (event) => {
            consumerTries.set(event.data.n as string, (consumerTries.get(event.data.n as string) ?? 0) + 1);
            if (event.data.poison) throw new PoisonEventError(`bad ${event.data.n}`);
          },
          { deadLetter: 'poison-only', maxAttempts: 2 },
        );
        await fixture.bus.start();
        const p1 = await append(fixture, 'test', newEvent('Redeliver', { n: 'p1', poison: true }));
        const p2 = await append(fixture, 'live', newEvent('Redeliver', { n: 'p2', poison: true }));
        await append(fixture, 'test', newEvent('Redeliver', { n: 'ok', poison: false }));
        await until(async () => (await deadLetters(fixture.bus, 'redeliver')) === 2, 'two dead letters');
        await until(() => consumerTries.get('ok') === 1, 'the event behind them');

        const first = await fixture.bus.redeliverDeadLetters('redeliver', async (event) => {
          if (event.data.n === 'p2') throw new Error('still bad');
        });
        assert.deepEqual(
          first.delivered.map((letter) => [letter.event, letter.attempts, letter.error]),
          [[p1, 3, 'bad p1']],
          'p1 passed: its two tries and this one, and the last failure before it',
        );
        assert.ok(!Number.isNaN(Date.parse(first.delivered[0]?.set_aside_at ?? '')));
        assert.deepEqual(
          first.remaining.map((letter) => [letter.event, letter.attempts, letter.error]),
          [[p2, 3, 'still bad']],
        );
        assert.equal(await deadLetters(fixture.bus, 'redeliver'), 1);

        const second = await fixture.bus.redeliverDeadLetters('redeliver', async () => {});
        assert.deepEqual(
          second.delivered.map((letter) => [letter.event.event_id, letter.attempts, letter.error]),
          [[p2.event_id, 4, 'still bad']],
        );
        assert.deepEqual(second.remaining, []);
        assert.equal(await deadLetters(fixture.bus, 'redeliver'), 0);
        assert.deepEqual(await fixture.bus.redeliverDeadLetters('redeliver', async () => {}), { delivered: [], remaining: [] });
        assert.deepEqual(Object.fromEntries(consumerTries), { p1: 2, p2: 2, ok: 1 }, 'the consumer itself never went back to them');
      });
    });

    it('replays with readSince from an event id, and answers null for an id it cannot resume from', async () => {
      await withBus(async (fixture) => {
        await fixture.bus.start();
        const events = [
          await append(fixture, 'test', newEvent('Replay', { n: 1 }, TENANT, 'usr_1')),
          await append(fixture, 'test', newEvent('Replay', { n: 2 }, OTHER_TENANT)),
          await append(fixture, 'test', newEvent('Replay', { n: 3 }, TENANT, 'usr_2')),
          await append(fixture, 'test', newEvent('Replay', { n: 4 }, TENANT, 'usr_1')),
          await append(fixture, 'test', newEvent('Replay', { n: 5 }, OTHER_TENANT)),
        ];
        const [e1, e2, , , e5] = events as [BusEvent, BusEvent, BusEvent, BusEvent, BusEvent];
        const ns = (page: BusEvent[] | null) => page?.map((event) => event.data.n) ?? null;
        // Committed is not yet readable while an older transaction runs anywhere (a shared server): wait for all five.
        await until(async () => (await fixture.bus.readSince('test', null, 100))?.length === events.length, 'the events to be readable');
        assert.deepEqual(await fixture.bus.readSince('test', null, 100), events, 'from the start, as appended, in order');
        assert.deepEqual(ns(await fixture.bus.readSince('test', e2.event_id, 100)), [3, 4, 5], 'after an id, exclusive');
        assert.deepEqual(ns(await fixture.bus.readSince('test', e2.event_id, 2)), [3, 4], 'at most limit');
        assert.deepEqual(await fixture.bus.readSince('test', e5.event_id, 100), [], 'after the last one: nothing yet');
        assert.deepEqual(ns(await fixture.bus.readSince('test', null, 100, { tenantId: TENANT })), [1, 3, 4], "one tenant's");
        assert.deepEqual(ns(await fixture.bus.readSince('test', e1.event_id, 100, { tenantId: TENANT, ownerId: 'usr_1' })), [4], "one owner's");
        assert.equal(await fixture.bus.readSince('test', e2.event_id, 100, { tenantId: TENANT }), null, "another tenant's id is outside the filter");
        assert.equal(await fixture.bus.readSince('test', 'evt_999999999999', 100), null, 'an id no event has');
        assert.equal(await fixture.bus.readSince('test', 'not an event id', 100), null, 'not an id at all');
        assert.deepEqual(await fixture.bus.readSince('live', null, 100), [], 'environments do not share events');
      });
    });

    it('reports status per environment: pending events, dead letters, and when it last delivered', async () => {
      await withBus(async (fixture) => {
        const handled: string[] = [];
        fixture.bus.consume(
          'counted',
          async (event) => {
            if (event.data.poison) throw new PoisonEventError('bad');
            handled.push(event.data.n as string);
          },
          { deadLetter: 'poison-only', maxAttempts: 1 },
        );
        await append(fixture, 'test', newEvent('Status', { n: 't1' }));
        await append(fixture, 'test', newEvent('Status', { n: 't2', poison: true }, OTHER_TENANT));
        await append(fixture, 'test', newEvent('Status', { n: 't3' }));
        await append(fixture, 'live', newEvent('Status', { n: 'l1' }));
        const of = async (tenantId?: string) => {
          const statuses = await fixture.bus.status('counted', tenantId);
          assert.deepEqual(statuses.map((status) => status.environment).sort(), ['live', 'test']);
          for (const status of statuses) assert.equal(status.consumer, 'counted');
          const byEnvironment = (environment: Environment) => statuses.find((status) => status.environment === environment);
          return { live: byEnvironment('live'), test: byEnvironment('test') };
        };
        const before = await of();
        assert.deepEqual([before.test?.pending, before.test?.deadLetters, before.test?.lastDeliveredAt], [3, 0, null]);
        assert.deepEqual([before.live?.pending, before.live?.deadLetters, before.live?.lastDeliveredAt], [1, 0, null]);
        assert.deepEqual([(await of(TENANT)).test?.pending, (await of(OTHER_TENANT)).test?.pending, (await of('ten_nobody')).live?.pending], [2, 1, 0]);

        const startedAt = Date.now();
        await fixture.bus.start();
        await until(() => ['t1', 't3', 'l1'].every((n) => handled.includes(n)), 'the good events');
        await until(async () => {
          const now = await of();
          return now.test?.pending === 0 && now.test.deadLetters === 1 && now.live?.pending === 0;
        }, 'the cursors to pass everything');
        const after = await of();
        for (const status of [after.test, after.live]) {
          const at = Date.parse(status?.lastDeliveredAt ?? '');
          // The database's clock: the same machine's, give or take a little.
          assert.ok(at >= startedAt - 2_000 && at <= Date.now() + 2_000, `lastDeliveredAt ${status?.lastDeliveredAt}`);
        }
        assert.equal(after.live?.deadLetters, 0);
        assert.equal((await of(OTHER_TENANT)).test?.deadLetters, 1, "the dead letter is the other tenant's");
        assert.equal((await of(TENANT)).test?.deadLetters, 0, 'a tenant sees only its own');
      });
    });
  });
}
