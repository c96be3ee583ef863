import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BusEvent } from '../../core/events.ts';
import type { BusFixture, BusHarness } from './bus.contract.ts';

/**
 * The part of the EventBus contract that leadership stands on (src/platform/led.ts): one
 * consumer started and stopped alone, in a process whose bus runs others, resuming at its
 * durable cursor. Same harness as bus.contract.ts.
 */
const actor = { type: 'system', id: 'bus-contract' } as const;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition: () => boolean, what: string, limitMs = 15_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const append = (fixture: BusFixture, n: number) =>
  fixture.write('test', (trx) => fixture.bus.append(trx, 'test', { type: 'Switch', tenant_id: 'ten_bus_switch', actor, owner_id: null, data: { n } }));

const numbers = (events: BusEvent[]) => [...new Set(events.map((event) => event.data.n as number))].sort((a, b) => a - b);

export function busStartStopContract(driver: string, harness: BusHarness): void {
  async function withBus(work: (fixture: BusFixture) => Promise<void>): Promise<void> {
    const fixture = await harness.open();
    try {
      await work(fixture);
    } finally {
      await fixture.close();
    }
  }

  describe(`EventBus contract, one consumer started and stopped alone: ${driver}`, () => {
    it('a consumer registered with autoStart false gets nothing until startConsumer, then everything from its cursor', async () => {
      await withBus(async (fixture) => {
        const held: BusEvent[] = [];
        const other: BusEvent[] = [];
        fixture.bus.consume('held', async (event) => void held.push(event), { autoStart: false });
        fixture.bus.consume('other', async (event) => void other.push(event));
        await fixture.bus.start();
        await append(fixture, 1);
        await append(fixture, 2);
        await until(() => numbers(other).length === 2, 'the other consumer');
        // Several polls' worth: a started consumer would have had them by now.
        await sleep(300);
        assert.deepEqual(held, [], 'nothing reaches a consumer not started');
        fixture.bus.startConsumer('held');
        fixture.bus.startConsumer('held'); // a no-op while it runs
        await until(() => numbers(held).length === 2, 'the held consumer, once started');
        assert.deepEqual(numbers(held), [1, 2]);
        assert.throws(() => fixture.bus.startConsumer('nobody'), /nobody/);
      });
    });

    it('stopConsumer waits for the handler in hand, hands over nothing after it, and startConsumer resumes at the cursor', async () => {
      await withBus(async (fixture) => {
        const seen: BusEvent[] = [];
        const other: BusEvent[] = [];
        let inHand = 0;
        let release!: () => void;
        const released = new Promise<void>((resolve) => (release = resolve));
        fixture.bus.consume('switched', async (event) => {
          inHand++;
          if (event.data.n === 2) await released; // the event in hand when the stop comes
          seen.push(event);
          inHand--;
        });
        fixture.bus.consume('other', async (event) => void other.push(event));
        await fixture.bus.start();
        await append(fixture, 1);
        await append(fixture, 2);
        await until(() => inHand === 1 && numbers(seen).includes(1), 'event 2 in hand');

        let stopped = false;
        const stopping = fixture.bus.stopConsumer('switched').then(() => (stopped = true));
        await sleep(100);
        assert.equal(stopped, false, 'the stop waits for the handler in hand');
        release();
        await stopping;
        assert.equal(inHand, 0, 'resolved once the handler returned');
        const atStop = seen.length;

        await append(fixture, 3);
        await until(() => numbers(other).includes(3), 'the other consumer, which goes on');
        await sleep(300);
        assert.equal(seen.length, atStop, 'nothing is handed over once stopped');
        await fixture.bus.stopConsumer('switched'); // a no-op while stopped

        fixture.bus.startConsumer('switched');
        await until(() => numbers(seen).includes(3), 'event 3 after the restart');
        // At least once: what was in hand at the stop may come again, nothing is skipped.
        assert.deepEqual(numbers(seen), [1, 2, 3]);
      });
    });
  });
}
