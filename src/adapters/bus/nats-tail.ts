import { type ConsumerMessages, DeliverPolicy, type JetStreamManager, jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { sql } from 'kysely';
import type { Logger } from 'pino';
import type { BusEvent } from '../../core/events.ts';
import type { Environment } from '../../core/principal.ts';
import type { Db } from '../db/pg.ts';
import { ensureStreams, RELAY_CONSUMER, type StreamSettings, streamName } from './nats-relay.ts';
import type { Consumer } from './outbox-consumer.ts';
import { messageOf, type Retries, sleep } from './outbox-retries.ts';
import { eventIdOf, outboxIdOf } from './outbox-row.ts';

/**
 * An ephemeral consumer (each notifications instance) on one environment's JetStream stream:
 * an ordered consumer of its own from the live tail, no acks, nothing durable. Every process
 * gets every event relayed from its start on, in stream order (the relay's commit order).
 *
 * Where it starts, so that it gets what commits from its start on and nothing from before:
 * first the stream's last sequence L, then (in PostgreSQL) the ids of the committed events
 * the relay has not passed yet. Messages up to L are before the start; the relay publishes
 * those unrelayed ids after L, and they are skipped; whatever commits later is not among
 * them and comes after L. NATS away at the start: the start time stands in for L (messages
 * stored since; the server's clock, the same machine's in a single host deployment).
 *
 * NATS away later: the connection reconnects, and the ordered consumer comes back from the
 * last stream sequence it handed over (the client library's reset, or this loop's own when
 * the library gives up), so every event relayed once NATS is back reaches the handler, in
 * order; nothing handed over is handed over again (messages at or below the last sequence,
 * or from before the start, are dropped here). Live events pause meanwhile; the handler's
 * sockets stay connected.
 */
export interface TailLoop {
  consumer: Consumer;
  environment: Environment;
  db: Db;
  nc: NatsConnection;
  streams: StreamSettings;
  log: Logger;
  retries: Retries;
}

/** How long `start` waits for NATS before starting from the clock instead (the loop goes on trying). */
const START_WAIT_MS = 3_000;
const RETRY_MS = 500;

interface Floor {
  /** Messages at or below it were handed over, or are from before the start. */
  seq: number;
  /** Messages stored before it are from before the start (only while no sequence is known). */
  timeMs: number | null;
}

export class JetStreamTail {
  private floor: Floor = { seq: 0, timeMs: null };
  /** Committed before the start but not yet relayed: they come after L, and are skipped. */
  private skip = new Set<number>();
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;

  constructor(private readonly tail: TailLoop) {}

  /** Fixes where delivery starts (see above), then runs until `retries.signal` aborts. */
  async start(): Promise<void> {
    const { log, retries } = this.tail;
    const startedAt = Date.now();
    const last = await withTimeout(this.lastSequence(), START_WAIT_MS).catch((error) => {
      log.warn({ err: error }, 'JetStream unreachable at the start: live events from the start time once it is back');
      return null;
    });
    this.floor = last === null ? { seq: 0, timeMs: startedAt } : { seq: last, timeMs: null };
    this.skip = await retries.persistently(log, 'reading the unrelayed events', () => unrelayedIds(this.tail.db));
    this.loop = this.run();
  }

  /** Ends the loop and removes the ordered consumer (it would expire on its own). */
  async close(): Promise<void> {
    await this.messages?.close().catch(() => undefined);
    await this.loop;
  }

  private async lastSequence(): Promise<number> {
    const jsm = await jetstreamManager(this.tail.nc);
    await ensureStreams(jsm, this.tail.streams);
    const info = await jsm.streams.info(streamName(this.tail.streams.prefix, this.tail.environment));
    return info.state.last_seq;
  }

  private async run(): Promise<void> {
    const { log, retries, nc, streams, environment } = this.tail;
    const signal = retries.signal;
    const stream = streamName(streams.prefix, environment);
    const stop = () => void this.messages?.close().catch(() => undefined);
    signal.addEventListener('abort', stop);
    try {
      while (!signal.aborted) {
        try {
          const jsm: JetStreamManager = await jetstreamManager(nc);
          // The stream may be gone with the NATS store: made again (the relay would too).
          await ensureStreams(jsm, streams);
          const from = this.floor.timeMs === null || this.floor.seq > 0
            ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: this.floor.seq + 1 }
            : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(this.floor.timeMs).toISOString() };
          const ordered = await jetstream(nc).consumers.get(stream, from);
          if (signal.aborted) break;
          this.messages = await ordered.consume({ max_messages: 256 });
          if (signal.aborted) break;
          for await (const message of this.messages) {
            if (signal.aborted) break;
            await this.handOver(message.seq, Math.floor(message.info.timestampNanos / 1e6), () => message.json<BusEvent>(), message.subject);
          }
        } catch (error) {
          if (signal.aborted) break;
          log.warn({ err: messageOf(error) }, 'JetStream live tail ended; resuming from the last sequence');
        }
        // The library gave up (a long outage) or the iterator ended: resume from the floor.
        if (!signal.aborted) await sleep(RETRY_MS, signal);
      }
    } finally {
      signal.removeEventListener('abort', stop);
    }
  }

  /** One message in stream order: dropped when already handed over or from before the start. */
  private async handOver(seq: number, storedAtMs: number, parse: () => BusEvent, subject: string): Promise<void> {
    const { consumer, log } = this.tail;
    if (seq <= this.floor.seq) return;
    if (this.floor.timeMs !== null && this.floor.seq === 0 && storedAtMs < this.floor.timeMs) return;
    this.floor = { seq, timeMs: null };
    let event: BusEvent;
    try {
      event = parse();
    } catch {
      log.error({ subject, seq }, 'a message on the events stream that is no event; dropped');
      return;
    }
    const id = outboxIdOf(event?.event_id ?? '');
    if (id === null) return;
    if (this.skip.delete(id)) return;
    if (consumer.types && !consumer.types.has(event.type)) return;
    try {
      await consumer.handler(event);
    } catch (error) {
      // Ephemeral: no retries, no dead letters (a socket that missed it replays with `since`).
      log.warn({ err: error, event_id: eventIdOf(id) }, 'ephemeral consumer failed on a live event; going on');
    }
  }
}

/** Ids of the committed events the relay has not passed (its cursor), in this snapshot. */
async function unrelayedIds(db: Db): Promise<Set<number>> {
  const result = await sql<{ id: number }>`
      select o.id from bus.outbox o
      left join bus.consumer_cursor c on c.consumer = ${RELAY_CONSUMER}
      where c.consumer is null or (o.xid, o.id) > (c.xid, c.id)`.execute(db);
  return new Set(result.rows.map((row) => Number(row.id)));
}

function withTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}
