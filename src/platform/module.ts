import type { MigrationSet } from '../adapters/db/pg.ts';
import type { BatchEventHandler, ConsumerOptions, EventBus, EventHandler } from '../core/ports.ts';
import type { Route } from '../gateway/routes.ts';
import { tracedBatchHandler, tracedHandler } from './consumer-tracing.ts';

/**
 * One shape for every service. `npm start` mounts every module in one process behind the
 * gateway; `bantu serve <name>` mounts one alone. Either way the platform is built first,
 * each module is built on it with the narrow ports it needs, the consumers are registered,
 * the bus starts, then `start` runs; `close` runs in reverse order.
 */
export interface ServiceModule {
  readonly name: string;
  /** Its HTTP surface; the gateway mounts it in-process or proxies to it. */
  readonly routes: Route[];
  /** Routes only other services call (distributed mode): served on its own port, never announced to the gateway. */
  readonly internalRoutes?: Route[];
  /** Its durable bus consumers, registered before the bus starts. */
  readonly consumers: BusConsumer[];
  /**
   * Background work (sweeps, timers); after the bus has started and the gateway listens.
   * When that work runs once per installation, the process's leadership of it starts and
   * closes it (src/platform/led.ts): maybe several times in one process, and maybe never.
   */
  start(): Promise<void> | void;
  close(): Promise<void> | void;
}

/** The SQL migrations a service owns, per database (plain files, numbered per service). */
export interface ServiceMigrations {
  control?: MigrationSet[];
  environment?: MigrationSet[];
}

/** A durable consumer: one event at a time, or a batch of one read at a time. */
export type BusConsumer =
  | { name: string; batch?: false; handle: EventHandler; options?: ConsumerOptions }
  | { name: string; batch: true; handle: BatchEventHandler; options?: ConsumerOptions };

/**
 * Registers the modules' consumers on the bus, their work traced (src/platform/consumer-tracing.ts). `led`: they start only when this process is
 * elected to run them (src/platform/led.ts), not with the bus.
 */
export function registerConsumers(bus: EventBus, modules: readonly Pick<ServiceModule, 'name' | 'consumers'>[], options: { led?: boolean } = {}): void {
  for (const module of modules) {
    for (const consumer of module.consumers) {
      const consumerOptions = options.led ? { ...consumer.options, autoStart: false } : consumer.options;
      if (consumer.batch) bus.consumeBatch(consumer.name, tracedBatchHandler(module.name, consumer.name, consumer.handle), consumerOptions);
      else bus.consume(consumer.name, tracedHandler(module.name, consumer.name, consumer.handle), consumerOptions);
    }
  }
}
