import { type Leadership, leadership } from '../adapters/db/leader.ts';
import type { EventBus } from '../core/ports.ts';
import type { ServiceModule } from './module.ts';
import type { Platform } from './platform.ts';

/**
 * Work that runs once per installation however many processes mount it (a work consumer on
 * the outbox, a sweep, the outbox prune): each piece has a leadership name, and only the
 * process elected for it runs it (src/adapters/db/leader.ts). The names:
 * - `backup`: the backup worker (its consumer) and the backup sweep;
 * - `webhooks`: the webhooks consumer and its delivery worker;
 * - `files-sweep`: the files sweep (expired idempotency answers, orphan blobs);
 * - `exports`: the zip exports' queue (one export runs at a time) and their expiry sweep;
 * - `outbox-prune`: the pruning of the outbox's replayable history.
 * A process alone (`bantu start`) wins each at once. Every piece is safe to overlap for the
 * moment a deposed leader takes to notice (the consumers are at least once, the sweeps lock
 * what they delete), which is all that leadership has to guarantee.
 */
export interface LedWork {
  start(): Promise<void> | void;
  /** Stops at once; resolves when the work in hand has finished. May be followed by `start` again. */
  stop(): Promise<void> | void;
}

/** Contends for `name` until the platform closes; `work` runs while this process leads. */
export function runLed(platform: Platform, name: string, work: LedWork): Leadership {
  const led = leadership(platform.databases.controlUrl, name, {
    logger: platform.logger.child({ component: 'leader' }),
    onElected: () => work.start(),
    onDeposed: () => work.stop(),
  });
  platform.defer(() => led.close());
  return led;
}

/**
 * A module's background work as led work: its consumers (registered with `autoStart: false`,
 * see registerConsumers) and its start/close (sweeps), started and stopped together.
 */
export function moduleWork(bus: EventBus, module: Pick<ServiceModule, 'consumers' | 'start' | 'close'>): LedWork {
  return {
    async start() {
      for (const consumer of module.consumers) bus.startConsumer(consumer.name);
      await module.start();
    },
    async stop() {
      await Promise.all([module.close(), ...module.consumers.map((consumer) => bus.stopConsumer(consumer.name))]);
    },
  };
}

/** `task` every `everyMs` while leading (the first after one interval); a failing run is logged by `task` itself. */
export function periodicWork(everyMs: number, task: () => Promise<unknown>): LedWork {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> = Promise.resolve();
  return {
    start() {
      timer = setInterval(() => {
        running = task();
      }, everyMs);
      timer.unref();
    },
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
