import type { NatsConnection } from '@nats-io/transport-node';
import type { RawBuilder } from 'kysely';
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
import { type Databases, ENVIRONMENTS } from '../db/pg.ts';
import { runJetStreamConsumer } from './nats-consumer.ts';
import type { DurableSettings } from './nats-durable.ts';
import { natsRelay, RELAY_CONSUMER, type StreamSettings } from './nats-relay.ts';
import { JetStreamTail } from './nats-tail.ts';
import { OutboxBus } from './outbox.ts';
import type { Consumer } from './outbox-consumer.ts';
import { Retries } from './outbox-retries.ts';

export interface NatsBusOptions {
  streams: StreamSettings;
  durable: DurableSettings;
  /**
   * Whether this process relays the outbox to JetStream: `with-bus` (from `start`), `led`
   * (registered stopped: `startConsumer(RELAY_CONSUMER)` under the `nats-relay` leadership),
   * or `none` (another process of the installation relays).
   */
  relay: 'with-bus' | 'led' | 'none';
  retryBaseMs?: number;
  retryMaxMs?: number;
  pollMs?: number;
}

/**
 * The event bus on NATS JetStream. PostgreSQL stays the source of truth: `append` writes the
 * environment database's outbox in the writer's transaction, the relay (nats-relay.ts)
 * publishes what committed, and `readSince`, dead letters and `redeliverDeadLetters` read
 * PostgreSQL, so a `since` replay and a dead letter do not depend on which transport
 * carried the live events, nor on NATS being up.
 *
 * Durable consumers (the work consumers: backup, later exports and webhooks) read from one
 * JetStream durable pull consumer per consumer name on each environment's stream
 * (nats-consumer.ts, nats-durable.ts for the order it keeps), with the outbox's retries and
 * dead letters; each also mirrors its position into the outbox's cursor table, so that
 * `status` (per environment, per tenant) and the prune see it the same as on the outbox.
 *
 * Ephemeral consumers (each notifications instance) read the live tail of each
 * environment's stream through an ordered consumer of their own (nats-tail.ts): every
 * instance gets every event relayed from its start on, in the relay's commit order. NATS
 * down: live events pause (the sockets stay connected) and resume from the last stream
 * sequence handed over once it is back, so whatever the relay publishes then arrives once,
 * in order. History (`since`) is read from PostgreSQL whatever carried the live events.
 */
export class NatsBus implements EventBus {
  readonly outbox: OutboxBus;
  private readonly consumers: Consumer[] = [];
  private readonly ephemerals: Consumer[] = [];
  private readonly tails: JetStreamTail[] = [];
  private readonly running = new Map<string, { stop: AbortController; loops: Promise<void>[] }>();
  private readonly loops = new Set<Promise<void>>();
  private readonly abort = new AbortController();
  private started = false;

  constructor(
    private readonly databases: Databases,
    private readonly nc: NatsConnection,
    private readonly logger: Logger,
    private readonly options: NatsBusOptions,
  ) {
    this.outbox = new OutboxBus(databases, logger, options);
    if (options.relay !== 'none') {
      const relay = natsRelay(nc, options.streams, logger.child({ component: 'nats-relay' }));
      if (relay.batch) this.outbox.consumeBatch(relay.name, relay.handle, { ...relay.options, autoStart: options.relay === 'with-bus' });
    }
  }

  async append(trx: TransactionHandle, environment: Environment, event: NewEvent): Promise<BusEvent> {
    return this.outbox.append(trx, environment, event);
  }

  appendStatement(environment: Environment, event: NewEvent): RawBuilder<unknown> {
    return this.outbox.appendStatement(environment, event);
  }

  consume(name: string, handler: EventHandler, options: ConsumerOptions = {}): void {
    this.register({ name, handler, ...this.consumerOptions(options) });
  }

  consumeBatch(name: string, batchHandler: BatchEventHandler, options: ConsumerOptions = {}): void {
    this.register({ name, handler: (event) => batchHandler([event]), batchHandler, ...this.consumerOptions(options) });
  }

  private consumerOptions(options: ConsumerOptions) {
    return {
      types: options.types ? new Set(options.types) : undefined,
      maxAttempts: options.maxAttempts ?? 5,
      deadLetter: options.deadLetter ?? 'any-failure',
      autoStart: options.autoStart ?? true,
      // The live tail and the fetch hand events over as they arrive: `lowLatency` adds nothing (the port allows it).
      fromNotification: false,
      ephemeral: options.ephemeral ?? false,
    };
  }

  private register(consumer: Consumer): void {
    if (this.started) throw new Error('consumers are registered before the bus starts');
    const taken = [...this.consumers, ...this.ephemerals].some((c) => c.name === consumer.name);
    if (consumer.name === RELAY_CONSUMER || taken) throw new Error(`consumer registered twice: ${consumer.name}`);
    if (consumer.ephemeral) this.ephemerals.push(consumer);
    else this.consumers.push(consumer);
  }

  async start(): Promise<void> {
    // The tails fix where they start before the relay of this process runs (nats-tail.ts).
    const retries = new Retries(this.options, this.abort.signal);
    for (const consumer of this.ephemerals) {
      for (const environment of ENVIRONMENTS) {
        const tail = new JetStreamTail({
          consumer,
          environment,
          db: this.databases.environments[environment],
          nc: this.nc,
          streams: this.options.streams,
          log: this.logger.child({ consumer: consumer.name, environment }),
          retries,
        });
        await tail.start();
        this.tails.push(tail);
      }
    }
    await this.outbox.start();
    this.started = true;
    for (const consumer of this.consumers) if (consumer.autoStart) this.startConsumer(consumer.name);
  }

  startConsumer(name: string): void {
    const consumer = this.consumers.find((c) => c.name === name);
    if (!consumer) {
      this.outbox.startConsumer(name);
      return;
    }
    if (!this.started) throw new Error('consumers start once the bus has started');
    if (this.abort.signal.aborted || this.running.has(name)) return;
    const stop = new AbortController();
    const retries = new Retries(this.options, AbortSignal.any([this.abort.signal, stop.signal]));
    const loops = ENVIRONMENTS.map((environment) => {
      const loop: Promise<void> = runJetStreamConsumer({
        consumer,
        environment,
        db: this.databases.environments[environment],
        nc: this.nc,
        streams: this.options.streams,
        durable: this.options.durable,
        log: this.logger.child({ consumer: name, environment }),
        retries,
      }).finally(() => this.loops.delete(loop));
      this.loops.add(loop);
      return loop;
    });
    this.running.set(name, { stop, loops });
  }

  async stopConsumer(name: string): Promise<void> {
    if (!this.consumers.some((c) => c.name === name)) return this.outbox.stopConsumer(name);
    const run = this.running.get(name);
    if (!run) return;
    this.running.delete(name);
    run.stop.abort();
    await Promise.allSettled(run.loops);
  }

  async close(): Promise<void> {
    this.abort.abort();
    await Promise.allSettled([...this.loops, ...this.tails.map((tail) => tail.close())]);
    this.running.clear();
    await this.outbox.close();
  }

  async readSince(environment: Environment, afterEventId: string | null, limit: number, filter?: EventFilter): Promise<BusEvent[] | null> {
    return this.outbox.readSince(environment, afterEventId, limit, filter);
  }

  /** The outbox's replayable history (see OutboxBus.prune); the relay's cursor and each work consumer's mirror hold it back. */
  async prune(retentionHours: number): Promise<number> {
    return this.outbox.prune(retentionHours);
  }

  async status(name: string, tenantId?: string): Promise<ConsumerStatus[]> {
    return this.outbox.status(name, tenantId);
  }

  async redeliverDeadLetters(name: string, handler: EventHandler): Promise<{ delivered: DeadLetter[]; remaining: DeadLetter[] }> {
    return this.outbox.redeliverDeadLetters(name, handler);
  }
}
