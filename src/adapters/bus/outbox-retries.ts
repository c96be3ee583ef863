import { sql } from 'kysely';
import type { Logger } from 'pino';
import type { BusEvent } from '../../core/events.ts';
import { type DeadLetter, type EventHandler, PoisonEventError } from '../../core/ports.ts';
import type { Environment } from '../../core/principal.ts';
import { type Databases, type Db, ENVIRONMENTS } from '../db/pg.ts';
import type { Consumer } from './outbox-consumer.ts';
import { setFailing } from './outbox-cursor.ts';
import { type OutboxRow, toEvent } from './outbox-row.ts';

/**
 * Retries and dead letters. A failing event is retried with backoff (doubling, capped at
 * `retryMaxMs`). A failure that counts ends as a dead letter after `maxAttempts` of them: the
 * event is kept in bus.dead_letter until redelivered, and the cursor moves past it, so it
 * never blocks the events behind it.
 */

/** Backoff of retries: from `retryBaseMs`, doubling up to `retryMaxMs`. */
const RETRY_BASE_MS = 200;
const RETRY_MAX_MS = 30_000;

export class ShuttingDown extends Error {
  constructor() {
    super('the bus is shutting down');
  }
}

export const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

/** Waits `ms`, or until `signal` aborts. Leaves no listener on the signal: consumer loops sleep on theirs many times. */
export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });

/**
 * Retries with backoff, for the handlers and for the bus's own reads and writes (cursor,
 * dead letters): a database outage pauses a consumer, it never stops it. Only shutting
 * down (`signal`) ends a retry early.
 */
export class Retries {
  constructor(
    private readonly options: { retryBaseMs?: number; retryMaxMs?: number },
    readonly signal: AbortSignal,
  ) {}

  /** The wait before try `failures + 1`. */
  backoff(failures: number): number {
    return Math.min((this.options.retryBaseMs ?? RETRY_BASE_MS) * 2 ** Math.min(failures - 1, 30), this.options.retryMaxMs ?? RETRY_MAX_MS);
  }

  /** Runs `work` until it succeeds, with backoff; only shutting down ends it early (it then throws). */
  async persistently<T>(log: Logger, what: string, work: () => Promise<T>): Promise<T> {
    for (let failures = 1; ; failures++) {
      try {
        return await work();
      } catch (error) {
        if (this.signal.aborted) throw new ShuttingDown();
        const retryInMs = this.backoff(failures);
        log.warn({ err: error, attempt: failures, retryInMs }, `${what} failed; retrying`);
        await sleep(retryInMs, this.signal);
        if (this.signal.aborted) throw new ShuttingDown();
      }
    }
  }
}

/**
 * Hands one event to the handler until it passes or is set aside. `tries` counts every
 * failure (for the backoff and the logs), `counted` those that may make a dead letter: any
 * failure, or only a PoisonEventError (the consumer's `deadLetter` option). One that does
 * not count is retried for as long as it lasts, later events waiting behind it.
 */
export async function deliver(retries: Retries, consumer: Consumer, db: Db, row: OutboxRow, environment: Environment, log: Logger): Promise<void> {
  await deliverEvent(retries, consumer, db, toEvent(row, environment), row.id, log);
}

/** `deliver` for an event as any transport carried it; `outboxId` is its row in the environment's outbox (what a dead letter names). */
export async function deliverEvent(retries: Retries, consumer: Consumer, db: Db, event: BusEvent, outboxId: number, log: Logger): Promise<void> {
  let tries = 0;
  let counted = 0;
  let lastError: unknown;
  while (true) {
    try {
      await consumer.handler(event);
      if (tries > 0) {
        log.info({ event_id: event.event_id, failedTries: tries }, 'event handled after failed tries');
        await setFailing(db, consumer.name, null);
      }
      return;
    } catch (error) {
      if (retries.signal.aborted) throw error; // shutting down: the event stays pending
      lastError = error;
      tries++;
      const counts = consumer.deadLetter === 'any-failure' || error instanceof PoisonEventError;
      if (counts) counted++;
      if (counts && counted >= consumer.maxAttempts) break;
      const retryInMs = retries.backoff(tries);
      const context = { err: error, event_id: event.event_id, attempt: tries, counted, maxAttempts: consumer.maxAttempts, retryInMs };
      if (counts) log.warn(context, 'event handler failed');
      // Not the event's fault: retried until it passes; later events wait (they would fail the same way).
      else log.warn(context, 'event handler failed, not on the event itself (store or database down?): retrying until it passes');
      await setFailing(db, consumer.name, { attempts: tries, error: messageOf(error) });
      await sleep(retryInMs, retries.signal);
      if (retries.signal.aborted) throw new ShuttingDown();
    }
  }
  log.error({ event_id: event.event_id, attempts: tries, err: lastError }, 'event set aside as a dead letter');
  await retries.persistently(log, 'setting aside a dead letter', () => setAside(db, consumer.name, outboxId, tries, messageOf(lastError)));
  await setFailing(db, consumer.name, null);
}

export async function setAside(db: Db, consumer: string, eventId: number, attempts: number, error: string): Promise<void> {
  await sql`insert into bus.dead_letter (consumer, event_id, attempts, error)
          values (${consumer}, ${eventId}, ${attempts}, ${error})
          on conflict do nothing`.execute(db);
}

/** Takes an event back from the dead letters: it passed after all. */
export async function takeBack(db: Db, consumer: string, eventId: number): Promise<void> {
  await sql`delete from bus.dead_letter where consumer = ${consumer} and event_id = ${eventId}`.execute(db);
}

/** `EventBus.redeliverDeadLetters`: every environment, each in delivery order. */
export async function redeliverDeadLetters(
  databases: Databases,
  name: string,
  handler: EventHandler,
): Promise<{ delivered: DeadLetter[]; remaining: DeadLetter[] }> {
  const delivered: DeadLetter[] = [];
  const remaining: DeadLetter[] = [];
  for (const environment of ENVIRONMENTS) {
    const db = databases.environments[environment];
    const rows = await sql<OutboxRow & { attempts: number; error: string; created_at: Date }>`
        select o.id, o.xid::text as xid, o.type, o.tenant_id, o.owner_id, o.actor, o.data, o.occurred_at, o.traceparent, d.attempts, d.error, d.created_at
        from bus.dead_letter d join bus.outbox o on o.id = d.event_id
        where d.consumer = ${name}
        order by o.xid, o.id`.execute(db);
    for (const row of rows.rows) {
      const event = toEvent(row, environment);
      const letter: DeadLetter = {
        event,
        attempts: row.attempts + 1,
        error: row.error,
        set_aside_at: row.created_at.toISOString(),
      };
      try {
        await handler(event);
      } catch (error) {
        letter.error = messageOf(error);
        await sql`update bus.dead_letter set attempts = attempts + 1, error = ${letter.error}
                    where consumer = ${name} and event_id = ${row.id}`.execute(db);
        remaining.push(letter);
        continue;
      }
      await takeBack(db, name, row.id);
      delivered.push(letter);
    }
  }
  return { delivered, remaining };
}
