import { Gauge, type Registry } from 'prom-client';
import { type Databases, ENVIRONMENTS, poolUse } from '../adapters/db/pg.ts';
import type { ConsumerStatus, EventBus } from '../core/ports.ts';

/**
 * Metrics of what the platform opens, read at scrape time: the database pools, and the lag of
 * the durable bus consumers this process runs. Labels stay bounded: database (control, live,
 * test), state, consumer (a fixed name per consumer), environment.
 */
export function registerPoolMetrics(metrics: Registry, databases: Databases): void {
  const pools = { control: databases.control, live: databases.environments.live, test: databases.environments.test };
  new Gauge({
    name: 'bantu_db_pool_connections',
    help: 'Database pool connections of this process: open (total), idle, requests waiting for one, and the pool size (max)',
    labelNames: ['database', 'state'],
    registers: [metrics],
    collect() {
      for (const [database, db] of Object.entries(pools)) {
        const use = poolUse(db);
        if (!use) continue;
        for (const state of ['total', 'idle', 'waiting', 'max'] as const) this.set({ database, state }, use[state]);
      }
    },
  });
}

export interface BusMetrics {
  /** Report this durable consumer's lag from this process (one that runs it, or may: led work). */
  watch(consumer: string): void;
}

export function registerBusMetrics(metrics: Registry, bus: EventBus): BusMetrics {
  const watched = new Set<string>();
  // One status read per consumer serves the three gauges of a scrape (prom-client collects them concurrently).
  let inflight: Promise<ConsumerStatus[]> | undefined;
  const statuses = () => {
    inflight ??= Promise.all([...watched].map((name) => bus.status(name).catch(() => [] as ConsumerStatus[])))
      .then((all) => all.flat())
      .finally(() => setTimeout(() => (inflight = undefined), 500).unref());
    return inflight;
  };
  const gauge = (name: string, help: string, pick: (s: ConsumerStatus) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['consumer', 'environment'],
      registers: [metrics],
      async collect() {
        // A consumer whose status failed to read reports nothing this scrape, rather than a false 0.
        this.reset();
        for (const status of await statuses()) if (ENVIRONMENTS.includes(status.environment)) this.set({ consumer: status.consumer, environment: status.environment }, pick(status));
      },
    });
  gauge('bantu_bus_pending_events', 'Events committed that this durable consumer has not yet handled', (s) => s.pending);
  gauge('bantu_bus_lag_seconds', 'Age of the oldest event this durable consumer has not yet handled, in seconds (0 when none waits)', (s) =>
    s.oldestPendingAt ? Math.max(0, (Date.now() - Date.parse(s.oldestPendingAt)) / 1000) : 0,
  );
  gauge('bantu_bus_dead_letters', 'Events this durable consumer gave up on after its tries', (s) => s.deadLetters);
  return { watch: (consumer) => void watched.add(consumer) };
}
