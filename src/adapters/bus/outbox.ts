import type { RawBuilder } from 'kysely';
import type pg from 'pg';
import type { Logger } from 'pino';
import type { BusEvent, NewEvent } from '../../core/events.ts';
import type {
  BatchEventHandler,
  ConsumerOptions,
  ConsumerStatus,
  DeadLetter,
  EventBus,
  EventFilter,
  EventHandler,
  TransactionHandle,
} from '../../core/ports.ts';
import type { Environment } from '../../core/principal.ts';
import { type Databases, ENVIRONMENTS, type Tx } from '../db/pg.ts';
import { type Consumer, runConsumer } from './outbox-consumer.ts';
import { listen } from './outbox-listener.ts';
import { prune, status } from './outbox-maintenance.ts';
import type { NotificationTap } from './outbox-notification-tap.ts';
import { readSince } from './outbox-reader.ts';
import { Retries, redeliverDeadLetters } from './outbox-retries.ts';
import { appendEvent, appendStatement } from './outbox-writer.ts';

export { eventIdOf, outboxIdOf } from './outbox-row.ts';

/**
 * The embedded event bus: a transactional outbox table per environment database, and an
 * in-process dispatcher that feeds durable consumers. Its parts, one concern each:
 * - outbox-writer.ts: `append`, the row and its NOTIFY in the caller's transaction;
 * - outbox-reader.ts: reads in (xid, id) order, only below the oldest running transaction;
 * - outbox-consumer.ts: the loop of one consumer in one environment (read, deliver, save the cursor, wait);
 * - outbox-retries.ts: retries with backoff, dead letters, their redelivery;
 * - outbox-cursor.ts: the durable cursor and the failing state;
 * - outbox-listener.ts, outbox-notification-tap.ts: the LISTEN connection, wake-ups, and
 *   delivery from notifications (`lowLatency` consumers);
 * - outbox-maintenance.ts: status and pruning.
 *
 * Per-subject order: a writer of a subject (a file) calls `lockSubject` (src/core/ports.ts)
 * as the FIRST statement of its transaction, so that the xids of one subject's writers
 * follow their commit order, which is the order the reader delivers them in.
 *
 * A failure that counts (any, or only a PoisonEventError: the consumer's `deadLetter`
 * option) ends as a dead letter after `maxAttempts` of them, and later events go on; one
 * that does not count is retried for as long as it lasts, later events waiting behind it.
 * The bus's own reads and writes (cursor, dead letters) are retried the same way: a
 * database outage pauses a consumer, it never stops it.
 *
 * Two processes running one consumer would both deliver every event (each reads from the
 * shared cursor, and the last to save it wins): at least once still, but every event twice.
 * So a work consumer registered with `autoStart: false` starts and stops alone
 * (`startConsumer`, `stopConsumer`), under the installation's leadership (src/platform/led.ts).
 */
export class OutboxBus implements EventBus {
  private readonly consumers: Consumer[] = [];
  private readonly wakers = new Map<Environment, Set<() => void>>(ENVIRONMENTS.map((env) => [env, new Set()]));
  private readonly taps = new Map<Environment, Map<string, NotificationTap>>(ENVIRONMENTS.map((env) => [env, new Map()]));
  private readonly listeners: pg.Client[] = [];
  /** The consumers delivering in this process: the switch that stops each, and its loops (one per environment). */
  private readonly running = new Map<string, { stop: AbortController; loops: Promise<void>[]; positioned: Promise<void> }>();
  /** Every loop not yet ended, stopped ones included: what `close` waits for. */
  private readonly loops = new Set<Promise<void>>();
  private readonly abort = new AbortController();
  private started = false;

  constructor(
    private readonly databases: Databases,
    private readonly logger: Logger,
    private readonly options: { retryBaseMs?: number; retryMaxMs?: number; pollMs?: number } = {},
  ) {}

  async append(trx: TransactionHandle, environment: Environment, event: NewEvent): Promise<BusEvent> {
    return appendEvent(trx as Tx, environment, event);
  }

  appendStatement(environment: Environment, event: NewEvent): RawBuilder<unknown> {
    return appendStatement(environment, event).statement;
  }

  consume(name: string, handler: EventHandler, options: ConsumerOptions = {}): void {
    if (options.lowLatency && options.autoStart === false) throw new Error(`a lowLatency consumer starts with the bus: ${name}`);
    this.register({ name, handler, ...this.consumerOptions(options), fromNotification: options.lowLatency === true });
  }

  consumeBatch(name: string, batchHandler: BatchEventHandler, options: ConsumerOptions = {}): void {
    this.register({ name, handler: (event) => batchHandler([event]), batchHandler, ...this.consumerOptions(options), fromNotification: false });
  }

  private consumerOptions(options: ConsumerOptions) {
    return {
      types: options.types ? new Set(options.types) : undefined,
      maxAttempts: options.maxAttempts ?? 5,
      deadLetter: options.deadLetter ?? 'any-failure',
      autoStart: options.autoStart ?? true,
      ephemeral: options.ephemeral ?? false,
    };
  }

  private register(consumer: Consumer): void {
    if (this.started) throw new Error('consumers are registered before the bus starts');
    if (this.consumers.some((c) => c.name === consumer.name)) throw new Error(`consumer registered twice: ${consumer.name}`);
    this.consumers.push(consumer);
  }

  async start(): Promise<void> {
    this.started = true;
    if (this.consumers.length === 0) return;
    for (const environment of ENVIRONMENTS) {
      const client = await listen({
        environment,
        url: this.databases.environmentUrls[environment],
        logger: this.logger,
        signal: this.abort.signal,
        consumers: this.consumers,
        taps: this.taps.get(environment) as Map<string, NotificationTap>,
        wakers: this.wakers.get(environment) as Set<() => void>,
      });
      this.listeners.push(client);
    }
    for (const consumer of this.consumers) if (consumer.autoStart) this.startConsumer(consumer.name);
    // An ephemeral consumer delivers what commits after its start: `start` resolves once each knows where that is.
    const ephemerals = this.consumers.filter((consumer) => consumer.ephemeral && consumer.autoStart);
    await Promise.all(ephemerals.map((consumer) => this.running.get(consumer.name)?.positioned));
  }

  startConsumer(name: string): void {
    if (!this.started) throw new Error('consumers start once the bus has started');
    const consumer = this.consumers.find((c) => c.name === name);
    if (!consumer) throw new Error(`no consumer registered as ${name}`);
    if (this.abort.signal.aborted || this.running.has(name)) return;
    const stop = new AbortController();
    // Its own switch as well as the bus's: stopping it ends its waits and retries, not the others'.
    const retries = new Retries(this.options, AbortSignal.any([this.abort.signal, stop.signal]));
    const positions: Array<Promise<void>> = [];
    const loops = ENVIRONMENTS.map((environment) => {
      let positioned = () => {};
      positions.push(new Promise<void>((resolve) => (positioned = resolve)));
      const loop: Promise<void> = runConsumer({
        consumer,
        environment,
        db: this.databases.environments[environment],
        log: this.logger.child({ consumer: name, environment }),
        retries,
        wakers: this.wakers.get(environment) as Set<() => void>,
        tap: this.taps.get(environment)?.get(name),
        pollMs: this.options.pollMs,
        positioned,
      }).finally(() => this.loops.delete(loop));
      this.loops.add(loop);
      return loop;
    });
    this.running.set(name, { stop, loops, positioned: Promise.all(positions).then(() => undefined) });
  }

  async stopConsumer(name: string): Promise<void> {
    const run = this.running.get(name);
    if (!run) return;
    this.running.delete(name);
    run.stop.abort();
    await Promise.allSettled(run.loops);
  }

  async close(): Promise<void> {
    this.abort.abort();
    await Promise.allSettled([...this.loops]);
    this.running.clear();
    await Promise.allSettled(this.listeners.map((client) => client.end()));
  }

  async readSince(environment: Environment, afterEventId: string | null, limit: number, filter?: EventFilter): Promise<BusEvent[] | null> {
    return readSince(this.databases.environments[environment], environment, afterEventId, limit, filter);
  }

  /**
   * Deletes events older than the retention that every consumer has passed: they are
   * the history `readSince` replays from, so they stay at least `retentionHours`.
   */
  async prune(retentionHours: number): Promise<number> {
    return prune(this.databases, retentionHours);
  }

  async status(name: string, tenantId?: string): Promise<ConsumerStatus[]> {
    return status(this.databases, name, tenantId);
  }

  async redeliverDeadLetters(name: string, handler: EventHandler): Promise<{ delivered: DeadLetter[]; remaining: DeadLetter[] }> {
    return redeliverDeadLetters(this.databases, name, handler);
  }
}
