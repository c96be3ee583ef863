import { type ConsumerMessages, type JsMsg, jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import type { BusEvent } from '../../core/events.ts';
import type { Environment } from '../../core/principal.ts';
import type { Db } from '../db/pg.ts';
import { type DurableSettings, durableName, ensureDurable, FETCH_BATCH, waitForHandover } from './nats-durable.ts';
import { ensureStreams, type StreamSettings, streamName } from './nats-relay.ts';
import type { Consumer } from './outbox-consumer.ts';
import { advanceCursor, cursorOf, setFailing } from './outbox-cursor.ts';
import { deliverEvent, type Retries, setAside, sleep, takeBack } from './outbox-retries.ts';
import { outboxIdOf } from './outbox-row.ts';

/** The minimum JetStream takes: a fetch waits this long for its batch to fill, then ends with what it got. */
const FETCH_EXPIRES_MS = 1_000;
const RETRY_FETCH_MS = 1_000;
const MIRROR_EVERY_MS = 100;

/** What one work consumer's loop in one environment works with. */
export interface JetStreamLoop {
  consumer: Consumer;
  environment: Environment;
  /** The environment's database: the consumer's dead letters, failing state and cursor mirror. */
  db: Db;
  nc: NatsConnection;
  streams: StreamSettings;
  durable: DurableSettings;
  log: Logger;
  retries: Retries;
}

/**
 * Fetches from the consumer's durable pull consumer on the environment's stream, hands the
 * events over in stream order, acknowledges them, and mirrors the position into the
 * PostgreSQL cursor (status, prune). See nats-durable.ts for the order it keeps. Runs until
 * the bus closes or the consumer stops (`retries.signal`); NATS away, it retries.
 */
export async function runJetStreamConsumer(loop: JetStreamLoop): Promise<void> {
  const { consumer, environment, db, nc, streams, durable, log, retries } = loop;
  const signal = retries.signal;
  const stream = streamName(streams.prefix, environment);
  let troubled = false;
  // A lost connection may have lost messages in transit (see below).
  const statuses = nc.status() as AsyncIterable<{ type: string }> & { stop(): void };
  (async () => {
    for await (const status of statuses) if (status.type === 'disconnect') troubled = true;
  })().catch(() => undefined);
  try {
    const jsm = await retries.persistently(log, 'reaching JetStream', () => jetstreamManager(nc));
    await retries.persistently(log, 'setting up the durable consumer', async () => {
      await ensureStreams(jsm, streams);
      await ensureDurable(jsm, stream, streams.prefix, environment, consumer.name, durable);
    });
    await retries.persistently(log, 'reading the cursor', () => cursorOf(db, consumer.name));
    // Left by a process that stopped while failing; said again at once if it still fails.
    await setFailing(db, consumer.name, null);
    await retries.persistently(log, 'waiting for the messages of the previous holder', () => waitForHandover(jsm, stream, consumer.name, durable.ackWaitMs, signal));
    const js = jetstream(nc);
    const mirror = cursorMirror(loop);
    while (!signal.aborted) {
      if (troubled) {
        // What the server sent as NATS went away may never have arrived here: it comes back
        // once its ack wait has passed, and must come before anything newer.
        await retries.persistently(log, 'waiting for the messages lost in transit', () => waitForHandover(jsm, stream, consumer.name, durable.ackWaitMs, signal));
        troubled = false;
      }
      let messages: ConsumerMessages;
      try {
        const pull = await js.consumers.get(stream, durableName(consumer.name));
        messages = await pull.fetch({ max_messages: FETCH_BATCH, expires: FETCH_EXPIRES_MS });
      } catch (error) {
        if (signal.aborted) break;
        log.warn({ err: error }, 'JetStream fetch failed; retrying');
        troubled = true;
        // The stream or consumer may be gone with the NATS store: made again before the next fetch.
        await ensureStreams(jsm, streams)
          .then(() => ensureDurable(jsm, stream, streams.prefix, environment, consumer.name, durable))
          .catch(() => undefined);
        await sleep(RETRY_FETCH_MS, signal);
        continue;
      }
      const stop = () => messages.stop();
      signal.addEventListener('abort', stop);
      try {
        const batch: JsMsg[] = [];
        for await (const message of messages) {
          batch.push(message);
          // What already arrived goes over together; the fetch goes on for the rest.
          if (messages.getPending() > 0 && batch.length < FETCH_BATCH) continue;
          mirror.reached(await handOver(loop, batch.splice(0)));
          await mirror.save(false);
          if (signal.aborted) break;
        }
        if (batch.length > 0 && !signal.aborted) mirror.reached(await handOver(loop, batch));
        else for (const message of batch) message.nak();
      } catch (error) {
        if (signal.aborted) break;
        log.warn({ err: error }, 'JetStream fetch ended on an error; fetching again');
        troubled = true;
        await sleep(RETRY_FETCH_MS, signal);
      } finally {
        signal.removeEventListener('abort', stop);
        // The acks on their way before the mirror says they are done, and before a next holder starts.
        await nc.flush().catch(() => undefined);
        await mirror.save(true);
      }
    }
  } catch (error) {
    if (!signal.aborted) log.error({ err: error }, 'consumer stopped on an unexpected error');
  } finally {
    statuses.stop();
  }
}

/**
 * Hands one fetched run of messages over, in order, and acknowledges each once handled (or
 * set aside). Stopped midway, it naks what it did not hand over: redelivered first to
 * whoever goes on. Says it is still working on the rest while a handler takes its time.
 * Returns the outbox id of the last event done.
 */
async function handOver(loop: JetStreamLoop, messages: JsMsg[]): Promise<number | undefined> {
  const { consumer, db, log, retries, durable } = loop;
  const signal = retries.signal;
  const open = new Set(messages);
  const heartbeat = setInterval(() => {
    for (const message of open) message.working();
  }, Math.max(100, Math.floor(durable.ackWaitMs / 3)));
  let lastDone: number | undefined;
  const done = (message: JsMsg, outboxId: number | null) => {
    message.ack();
    open.delete(message);
    if (outboxId !== null) lastDone = outboxId;
  };
  try {
    const wanted: Array<{ message: JsMsg; event: BusEvent; outboxId: number }> = [];
    for (const message of messages) {
      const event = parse(message);
      const outboxId = event ? outboxIdOf(event.event_id) : null;
      if (!event || outboxId === null) {
        log.error({ subject: message.subject, seq: message.seq }, 'a message on the events stream that is no event; acknowledged and dropped');
        done(message, null);
      } else if (consumer.types && !consumer.types.has(event.type)) {
        done(message, outboxId);
      } else {
        wanted.push({ message, event, outboxId });
      }
    }
    // A redelivery was in hand when a process died: one by one, so that the events that pass
    // are acknowledged before the one that may take this process down too.
    const redelivered = wanted.some((w) => w.message.info.deliveryCount > 1);
    if (!redelivered && consumer.batchHandler && wanted.length > 1 && (await handOverBatch(loop, wanted.map((w) => w.event)))) {
      for (const w of wanted) done(w.message, w.outboxId);
    } else {
      for (const w of wanted) {
        if (signal.aborted) break;
        const last = w.message.info.deliveryCount >= durable.maxDeliver;
        // JetStream's last delivery of it (max_deliver): a dead letter before the try, so that
        // it is not lost if this process dies in the handler too; taken back if it passes.
        if (last) await setAsideBeforeLastTry(loop, w.message, w.event, w.outboxId);
        await deliverEvent(retries, consumer, db, w.event, w.outboxId, log);
        if (last) await retries.persistently(log, 'taking back a dead letter', () => takeBack(db, consumer.name, w.outboxId));
        done(w.message, w.outboxId);
      }
    }
  } catch (error) {
    if (!signal.aborted) throw error;
  } finally {
    clearInterval(heartbeat);
    for (const message of open) message.nak();
  }
  return lastDone;
}

/**
 * The consumer's position mirrored into its PostgreSQL cursor (status, prune): at most every
 * MIRROR_EVERY_MS while events flow, and whenever a fetch ends, so status is at most about a
 * fetch behind. Only the mirror: JetStream's acks are what delivery goes by.
 */
function cursorMirror(loop: JetStreamLoop) {
  let through: number | undefined;
  let savedAt = 0;
  return {
    reached(outboxId: number | undefined) {
      if (outboxId !== undefined) through = outboxId;
    },
    async save(force: boolean) {
      const to = through;
      if (to === undefined || (!force && performance.now() - savedAt < MIRROR_EVERY_MS)) return;
      through = undefined;
      savedAt = performance.now();
      if (loop.retries.signal.aborted) await advanceCursor(loop.db, loop.consumer.name, to).catch(() => undefined);
      else await loop.retries.persistently(loop.log, 'saving the cursor', () => advanceCursor(loop.db, loop.consumer.name, to)).catch(() => undefined);
    },
  };
}

async function setAsideBeforeLastTry(loop: JetStreamLoop, message: JsMsg, event: BusEvent, outboxId: number): Promise<void> {
  const deliveries = message.info.deliveryCount;
  loop.log.error({ event_id: event.event_id, deliveries }, 'event redelivered max_deliver times: a dead letter unless this last try passes');
  const error = `delivered ${deliveries} times without an acknowledgement (its handler's process stopped or died each time)`;
  await loop.retries.persistently(loop.log, 'setting aside a dead letter', () => setAside(loop.db, loop.consumer.name, outboxId, deliveries, error));
}

/** One try at the whole run; false when it failed (the caller then goes event by event). */
async function handOverBatch(loop: JetStreamLoop, events: BusEvent[]): Promise<boolean> {
  try {
    await loop.consumer.batchHandler?.(events);
    return true;
  } catch (error) {
    if (loop.retries.signal.aborted) throw error;
    loop.log.warn({ err: error, events: events.length }, 'batch failed; retrying its events one by one');
    return false;
  }
}

function parse(message: JsMsg): BusEvent | null {
  try {
    const event = message.json<BusEvent>();
    return typeof event?.event_id === 'string' && typeof event.type === 'string' ? event : null;
  } catch {
    return null;
  }
}
