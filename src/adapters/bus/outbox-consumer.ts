import type { Logger } from 'pino';
import type { BatchEventHandler, ConsumerOptions, EventHandler } from '../../core/ports.ts';
import type { Environment } from '../../core/principal.ts';
import type { Db } from '../db/pg.ts';
import { cursorOf, saveCursor, setFailing } from './outbox-cursor.ts';
import type { NotificationTap } from './outbox-notification-tap.ts';
import { presentPosition, readPending } from './outbox-reader.ts';
import { deliver, type Retries, sleep } from './outbox-retries.ts';
import { type OutboxRow, type Position, toEvent } from './outbox-row.ts';

const BATCH = 200;
const POLL_MS = 1000;
/** First re-check after activity; doubles up to POLL_MS while nothing new shows up. */
const RECHECK_MS = 5;
/**
 * Least time from one read to the next while events keep coming (not while catching up on a
 * full batch): one read then takes what several commits notified, instead of one read per
 * commit, each with its cursor save. A read after a quiet spell goes at once, and what a
 * `lowLatency` consumer gets from its notification never waits for a read.
 */
const READ_GAP_MS = 10;

/** A registered consumer, its options resolved. */
export interface Consumer {
  name: string;
  handler: EventHandler;
  /** Set for batch consumers; `handler` then hands it one event at a time. */
  batchHandler?: BatchEventHandler;
  types?: ReadonlySet<string>;
  maxAttempts: number;
  deadLetter: NonNullable<ConsumerOptions['deadLetter']>;
  /** Delivers from the bus's start (false: from `startConsumer`). */
  autoStart: boolean;
  /** Delivers from notifications ahead of the read (the `lowLatency` option; `consume` only). */
  fromNotification: boolean;
  /** No durable cursor: delivers what commits from its start on, in this process only (the `ephemeral` option). */
  ephemeral: boolean;
}

/** What one consumer's loop in one environment works with. */
export interface ConsumerLoop {
  consumer: Consumer;
  environment: Environment;
  db: Db;
  log: Logger;
  retries: Retries;
  /** Where the environment's listener finds this loop's wake-up, called on every notification. */
  wakers: Set<() => void>;
  /** The consumer's tap when it delivers from notifications. Kept even if the listener drops it: what went ahead must still be skipped by the read. */
  tap: NotificationTap | undefined;
  pollMs: number | undefined;
  /** Called once the loop knows where it starts (or stops before): the bus's `start` waits for it, so that an ephemeral consumer gets what commits after `start`. */
  positioned: () => void;
}

/**
 * Reads the consumer's pending rows, delivers them, saves the cursor, and waits for the
 * next NOTIFY (sent by the appending transaction, so only on commit) or a poll as a
 * fallback. Runs until the bus shuts down or the consumer is stopped (`retries.signal`).
 */
export async function runConsumer(loop: ConsumerLoop): Promise<void> {
  const { consumer, environment, db, log, retries, wakers, tap } = loop;
  const signal = retries.signal;
  let wake: (() => void) | undefined;
  let poked = false;
  let wokenByNotify = false;
  let idleWaitMs = RECHECK_MS;
  const onWake = () => {
    poked = true;
    wokenByNotify = true;
    wake?.();
  };
  wakers.add(onWake);
  signal.addEventListener('abort', onWake);
  try {
    let cursor: Position;
    // An ephemeral consumer's rows that committed before its start, though after its position.
    let past: ((xid: string) => boolean) | undefined;
    if (consumer.ephemeral) {
      const present = await retries.persistently(log, 'finding the present', () => presentPosition(db));
      cursor = present.position;
      past = present.committedBefore;
    } else {
      const saved = await retries.persistently(log, 'reading the cursor', () => cursorOf(db, consumer.name));
      // Left by a process that stopped while failing; said again at once if it still fails.
      await setFailing(db, consumer.name, null);
      cursor = { xid: saved.xid, id: saved.id };
    }
    if (tap) tap.position = { xid: BigInt(cursor.xid), id: cursor.id };
    loop.positioned();
    let lastReadAt = Number.NEGATIVE_INFINITY;
    let catchingUp = false;
    while (!signal.aborted) {
      const sinceRead = performance.now() - lastReadAt;
      if (!catchingUp && sinceRead < READ_GAP_MS) await sleep(READ_GAP_MS - sinceRead, signal);
      if (signal.aborted) break;
      // Cleared before the read: whatever committed before it is in it.
      poked = false;
      lastReadAt = performance.now();
      let rows: OutboxRow[];
      let horizon: bigint | null;
      try {
        ({ rows, horizon } = await readPending(db, cursor, BATCH));
      } catch (error) {
        if (signal.aborted) break;
        log.warn({ err: error }, 'outbox read failed; retrying');
        await sleep(POLL_MS, signal);
        continue;
      }
      catchingUp = rows.length === BATCH;
      const isWanted = (row: OutboxRow) => (!consumer.types || consumer.types.has(row.type)) && !past?.(row.xid);
      const wanted = rows.filter(isWanted);
      if (tap) {
        // One row at a time, between the deliveries from notifications: skip what went
        // ahead, deliver the rest, and let the notifications behind each row go.
        for (const row of rows) {
          if (signal.aborted) return;
          await tap.exclusive(async () => {
            if (!tap.ahead.has(row.id) && isWanted(row)) {
              await deliver(retries, consumer, db, row, environment, log);
            }
            tap.passed({ xid: BigInt(row.xid), id: row.id });
          });
        }
        if (rows.length < BATCH && horizon !== null) tap.caughtUp(horizon);
        tap.drain();
      } else if (consumer.batchHandler && wanted.length > 1 && (await deliverBatch(retries, consumer, wanted, environment, log))) {
        // delivered together
      } else {
        for (const row of wanted) {
          if (signal.aborted) return;
          await deliver(retries, consumer, db, row, environment, log);
        }
      }
      if (signal.aborted) return;
      const last = rows[rows.length - 1];
      if (last) cursor = { xid: last.xid, id: last.id };
      if (rows.length > 0 && !consumer.ephemeral) {
        const saving = cursor;
        await retries.persistently(log, 'saving the cursor', () => saveCursor(db, consumer.name, saving));
      }
      if (rows.length < BATCH && !poked) {
        // A NOTIFY'd row can still be hidden behind an older transaction that is about to
        // end without notifying (a cursor update, a login): look again soon after any
        // activity, backing off to the plain poll when all is quiet.
        const pollMs = loop.pollMs ?? POLL_MS;
        const waitMs = rows.length > 0 || wokenByNotify ? RECHECK_MS : Math.min(idleWaitMs * 2, pollMs);
        idleWaitMs = waitMs;
        wokenByNotify = false;
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, waitMs).unref();
        });
        wake = undefined;
      }
    }
  } catch (error) {
    if (!signal.aborted) log.error({ err: error }, 'consumer stopped on an unexpected error');
  } finally {
    loop.positioned();
    wakers.delete(onWake);
    signal.removeEventListener('abort', onWake);
  }
}

/** One try at the whole batch; false when it failed (the caller then goes event by event). */
async function deliverBatch(retries: Retries, consumer: Consumer, rows: OutboxRow[], environment: Environment, log: Logger): Promise<boolean> {
  try {
    await consumer.batchHandler?.(rows.map((row) => toEvent(row, environment)));
    return true;
  } catch (error) {
    if (retries.signal.aborted) throw error;
    log.warn({ err: error, events: rows.length }, 'batch failed; retrying its events one by one');
    return false;
  }
}
