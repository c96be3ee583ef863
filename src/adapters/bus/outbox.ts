import { sql } from 'kysely';
import pg from 'pg';
import type { Logger } from 'pino';
import type { BusEvent, NewEvent } from '../../core/events.ts';
import {
  type BatchEventHandler,
  type ConsumerOptions,
  type ConsumerStatus,
  type DeadLetter,
  type EventBus,
  type EventFilter,
  type EventHandler,
  PoisonEventError,
} from '../../core/ports.ts';
import type { Environment } from '../../core/principal.ts';
import { type Databases, type Db, ENVIRONMENTS, type Tx } from '../db/pg.ts';

/**
 * The embedded event bus: a transactional outbox table per environment database, and an
 * in-process dispatcher that feeds durable consumers.
 *
 * Delivery order is (xid, id), and a row is read only once its writing transaction is
 * older than every running one (`xid < pg_snapshot_xmin(pg_current_snapshot())`). A plain
 * `id > cursor` reader would silently skip a row whose transaction got a smaller id but
 * committed after a larger one.
 *
 * Per-subject order: a writer of a subject (a file) calls `lockSubject` as the FIRST
 * statement of its transaction. An advisory lock is taken without a transaction id, so
 * the xid is assigned only once the lock is held: xids of one subject's writers then follow
 * their commit order. (A row lock is not enough: UPDATE and SELECT FOR UPDATE take their
 * xid before waiting, and two waiters may be granted the row in the other order.)
 *
 * Consumers wake on NOTIFY (sent by the same transaction, so only on commit) and poll as
 * a fallback.
 *
 * Delivery from the notification (`fromNotification`, for latency-bound consumers): the
 * NOTIFY of an append carries its event when, at the append, no transaction older than the
 * appender's was running. No row can then ever come before it in (xid, id) order that has
 * not committed before it, and PostgreSQL hands notifications over in commit order: so a
 * listener that has every earlier notification's event delivered may deliver this one at
 * once, without reading the table, in exactly the order the read would have. The read goes
 * on behind it (it moves and saves the cursor, skips what was delivered ahead, and delivers
 * what a notification could not carry: an append that had an older transaction running, an
 * event too large for a notification, anything from before the listener started). Until
 * the read has caught up with the moment the listener started (its xmin passes the xmax
 * seen then), nothing is delivered ahead. After a crash, what was delivered ahead of the
 * saved cursor comes again: at least once, as always.
 *
 * A failing event is retried with backoff (doubling, capped at `retryMaxMs`).
 * A failure that counts (any, or only a PoisonEventError: the consumer's `deadLetter`
 * option) ends as a dead letter after `maxAttempts` of them, and later events go on; one
 * that does not count is retried for as long as it lasts, later events waiting behind it.
 * The bus's own reads and writes (cursor, dead letters) are retried the same way: a
 * database outage pauses a consumer, it never stops it.
 */
const CHANNEL = 'bantu_outbox';
const BATCH = 200;
const POLL_MS = 1000;
/** First re-check after activity; doubles up to POLL_MS while nothing new shows up. */
const RECHECK_MS = 5;
/** A notification's payload must stay under 8000 bytes; larger events go by the read only. */
const NOTIFY_PAYLOAD_MAX = 7900;
/** Notifications waiting for the read (delivered-ahead ids too) beyond which a listener stops delivering ahead and re-arms. */
const AHEAD_MAX = 20_000;
/** Backoff of retries: from `retryBaseMs`, doubling up to `retryMaxMs`. */
const RETRY_BASE_MS = 200;
const RETRY_MAX_MS = 30_000;

interface OutboxRow {
  id: number;
  xid: string;
  type: string;
  tenant_id: string;
  owner_id: string | null;
  actor: BusEvent['actor'];
  data: Record<string, unknown>;
  occurred_at: Date;
}

/**
 * Serialises the writers of one subject until the end of the transaction. Call it before
 * anything that writes, or the per-subject delivery order is lost.
 */
export async function lockSubject(trx: unknown, subject: string): Promise<void> {
  await sql`select pg_advisory_xact_lock(hashtextextended(${subject}, 0))`.execute(trx as Tx);
}

export function eventIdOf(id: number | bigint): string {
  return `evt_${id.toString().padStart(12, '0')}`;
}

/** Parses an event id; null when it is not one of ours. */
export function outboxIdOf(eventId: string): number | null {
  const match = /^evt_(\d{1,18})$/.exec(eventId);
  return match ? Number(match[1]) : null;
}

function toEvent(row: OutboxRow, environment: Environment): BusEvent {
  return {
    event_id: eventIdOf(row.id),
    type: row.type,
    tenant_id: row.tenant_id,
    environment,
    occurred_at: row.occurred_at.toISOString(),
    actor: row.actor,
    owner_id: row.owner_id,
    data: row.data,
  };
}

interface CursorRow {
  xid: string;
  id: number;
  last_delivered_at: Date | null;
  failing_since: Date | null;
  failing_attempts: number;
  failing_error: string | null;
}

/** Options of this driver beyond the port's. */
export interface OutboxConsumerOptions extends ConsumerOptions {
  /**
   * Deliver an event straight from its commit's notification when the order allows (see
   * above), instead of after a read of the table. For `consume` only.
   */
  fromNotification?: boolean;
}

/** What an append's NOTIFY carries: the row's position, its type, and the event when it may be delivered from it. */
interface Note {
  id: number;
  xid: bigint;
  type: string;
  event: BusEvent | null;
}

function parseNote(payload: string | undefined, environment: Environment): Note | null {
  if (!payload) return null;
  try {
    const note = JSON.parse(payload) as { id?: unknown; xid?: unknown; type?: unknown; event?: BusEvent };
    if (typeof note.id !== 'number' || typeof note.xid !== 'string' || typeof note.type !== 'string') return null;
    const event = note.event && note.event.environment === environment ? note.event : null;
    return { id: note.id, xid: BigInt(note.xid), type: note.type, event };
  } catch {
    return null;
  }
}

/** (xid, id) order. */
function compare(a: { xid: bigint; id: number }, b: { xid: bigint; id: number }): number {
  return a.xid === b.xid ? a.id - b.id : a.xid < b.xid ? -1 : 1;
}

/**
 * One `fromNotification` consumer in one environment: the notifications not yet known to be
 * delivered, in commit order, and the ids delivered from them ahead of the read. Handler
 * calls of the read and of the notifications go one at a time (`exclusive`).
 */
class NotificationTap {
  /** Set once the read has caught up with the listener's start; until then, nothing is delivered ahead. */
  enabled = false;
  /** The xmax seen when the listener started (or re-armed): the read's xmin must pass it. */
  armedAt: bigint | null = null;
  /** Notifications not yet delivered, in commit order. */
  readonly queue: Note[] = [];
  /** Ids delivered from a notification that the read has not passed yet. */
  readonly ahead = new Set<number>();
  /** The read's position: every row up to it has been delivered. */
  position: { xid: bigint; id: number } = { xid: 0n, id: 0 };
  private chain: Promise<void> = Promise.resolve();
  private draining = false;
  /** Counts re-arms: only the latest one's xmax counts. */
  private generation = 0;

  constructor(
    readonly consumer: Consumer,
    private readonly log: Logger,
    private readonly signal: AbortSignal,
    /** Reads the current xmax on the listener's connection and hands it over (not at all if the listener is gone). */
    private readonly rearm: (armAt: (xmax: bigint) => void) => void,
  ) {}

  /** Runs `work` when no other handler call of this consumer and environment is under way. */
  async exclusive<T>(work: () => Promise<T>): Promise<T> {
    const previous = this.chain;
    let release = () => {};
    this.chain = new Promise<void>((resolve) => {
      release = resolve;
    });
    await previous;
    try {
      return await work();
    } finally {
      release();
    }
  }

  delivered(note: { id: number; xid: bigint }): boolean {
    return this.ahead.has(note.id) || compare(note, this.position) <= 0;
  }

  /** A notification arrived (in commit order). */
  push(note: Note): void {
    if (this.delivered(note)) return;
    if (this.queue.length + this.ahead.size >= AHEAD_MAX) {
      // The read is far behind (a long transaction holds the xmin back, or it fails):
      // forget the queue, and deliver ahead again once the read has caught up.
      this.disarm('too many notifications wait for the read');
      return;
    }
    this.queue.push(note);
    this.drain();
  }

  /**
   * Stops delivering ahead, and forgets the queue, until the read has passed the xmax the
   * listener reads now: every notification forgotten is of a transaction below it.
   */
  disarm(reason: string): void {
    if (this.enabled) this.log.warn({ reason }, 'delivery from notifications paused until the read catches up');
    this.enabled = false;
    this.armedAt = null;
    this.queue.length = 0;
    const generation = ++this.generation;
    this.rearm((xmax) => {
      if (this.generation === generation && !this.enabled) this.armedAt = xmax;
    });
  }

  /** The read, after a complete read whose xmin was `horizon`, with everything before it delivered. */
  caughtUp(horizon: bigint): void {
    if (this.armedAt === null || horizon < this.armedAt) return;
    this.armedAt = null;
    this.enabled = true;
    this.drain();
  }

  /** Delivers the queue's head while it is deliverable from its notification. */
  drain(): void {
    if (!this.enabled || this.draining || this.queue.length === 0) return;
    this.draining = true;
    void this.exclusive(async () => {
      try {
        while (this.enabled && !this.signal.aborted) {
          const head = this.queue[0];
          if (!head) break;
          if (this.delivered(head) || (this.consumer.types && !this.consumer.types.has(head.type))) {
            this.queue.shift();
            continue;
          }
          if (!head.event) break; // the read delivers it; later ones wait behind it
          this.ahead.add(head.id);
          try {
            await this.consumer.handler(head.event);
          } catch (error) {
            // The read delivers it, with its retries; what follows waits behind it.
            this.ahead.delete(head.id);
            head.event = null;
            this.log.warn({ err: error, event_id: eventIdOf(head.id) }, 'delivery from the notification failed; left to the read');
            break;
          }
          this.queue.shift();
        }
      } finally {
        this.draining = false;
      }
    });
  }

  /** The read passed `row` (delivered it, or found it delivered ahead). */
  passed(row: { xid: bigint; id: number }): void {
    this.ahead.delete(row.id);
    this.position = row;
  }
}

interface Consumer {
  name: string;
  handler: EventHandler;
  /** Set for batch consumers; `handler` then hands it one event at a time. */
  batchHandler?: BatchEventHandler;
  types?: ReadonlySet<string>;
  maxAttempts: number;
  deadLetter: NonNullable<ConsumerOptions['deadLetter']>;
  fromNotification: boolean;
}

class ShuttingDown extends Error {
  constructor() {
    super('the bus is shutting down');
  }
}

const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    });
  });

export class OutboxBus implements EventBus {
  private readonly consumers: Consumer[] = [];
  private readonly wakers = new Map<Environment, Set<() => void>>(ENVIRONMENTS.map((env) => [env, new Set()]));
  private readonly taps = new Map<Environment, Map<string, NotificationTap>>(ENVIRONMENTS.map((env) => [env, new Map()]));
  private readonly listeners: pg.Client[] = [];
  private readonly loops: Promise<void>[] = [];
  private readonly abort = new AbortController();
  private started = false;

  constructor(
    private readonly databases: Databases,
    private readonly logger: Logger,
    private readonly options: { retryBaseMs?: number; retryMaxMs?: number; pollMs?: number } = {},
  ) {}

  async append(trx: unknown, environment: Environment, event: NewEvent): Promise<BusEvent> {
    const tx = trx as Tx;
    const row = await sql<OutboxRow>`
      insert into bus.outbox (type, tenant_id, owner_id, actor, data)
      values (${event.type}, ${event.tenant_id}, ${event.owner_id ?? null}, ${JSON.stringify(event.actor)}::jsonb, ${JSON.stringify(event.data)}::jsonb)
      returning id, xid::text as xid, type, tenant_id, owner_id, actor, data, occurred_at`.execute(tx);
    const inserted = row.rows[0] as OutboxRow;
    const busEvent = toEvent(inserted, environment);
    // The event rides along only if no older transaction is running now: none can start
    // later (xids only grow), so nothing can come before it that has not committed first.
    const position = `{"id":${inserted.id},"xid":"${inserted.xid}","type":${JSON.stringify(inserted.type)}`;
    const full = `${position},"event":${JSON.stringify(busEvent)}}`;
    const bare = `${position}}`;
    await sql`select pg_notify(${CHANNEL}, case when pg_snapshot_xmin(pg_current_snapshot()) >= pg_current_xact_id()
                                            then ${Buffer.byteLength(full) <= NOTIFY_PAYLOAD_MAX ? full : bare}::text else ${bare}::text end)`.execute(tx);
    return busEvent;
  }

  consume(name: string, handler: EventHandler, options: OutboxConsumerOptions = {}): void {
    this.register({ name, handler, ...this.consumerOptions(options), fromNotification: options.fromNotification === true });
  }

  consumeBatch(name: string, batchHandler: BatchEventHandler, options: ConsumerOptions = {}): void {
    this.register({ name, handler: (event) => batchHandler([event]), batchHandler, ...this.consumerOptions(options), fromNotification: false });
  }

  private consumerOptions(options: ConsumerOptions) {
    return {
      types: options.types ? new Set(options.types) : undefined,
      maxAttempts: options.maxAttempts ?? 5,
      deadLetter: options.deadLetter ?? 'any-failure',
    };
  }

  /** The wait before try `failures + 1`. */
  private backoff(failures: number): number {
    return Math.min((this.options.retryBaseMs ?? RETRY_BASE_MS) * 2 ** Math.min(failures - 1, 30), this.options.retryMaxMs ?? RETRY_MAX_MS);
  }

  /** Runs `work` until it succeeds, with backoff; only shutting down ends it early (it then throws). */
  private async persistently<T>(log: Logger, what: string, work: () => Promise<T>): Promise<T> {
    for (let failures = 1; ; failures++) {
      try {
        return await work();
      } catch (error) {
        if (this.abort.signal.aborted) throw new ShuttingDown();
        const retryInMs = this.backoff(failures);
        log.warn({ err: error, attempt: failures, retryInMs }, `${what} failed; retrying`);
        await sleep(retryInMs, this.abort.signal);
        if (this.abort.signal.aborted) throw new ShuttingDown();
      }
    }
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
      const taps = this.taps.get(environment) as Map<string, NotificationTap>;
      const client = new pg.Client({ connectionString: this.databases.environmentUrls[environment] });
      let listening = true;
      // Notifications may have been missed from here on: nothing more is delivered ahead.
      const stopTaps = () => {
        listening = false;
        for (const tap of taps.values()) tap.enabled = false;
        taps.clear();
      };
      client.on('error', (error) => {
        this.logger.warn({ err: error, environment }, 'outbox listener connection lost; polling');
        stopTaps();
      });
      client.on('end', stopTaps);
      const rearm = (armAt: (xmax: bigint) => void) => {
        if (!listening) return;
        client.query<{ xmax: string }>('select pg_snapshot_xmax(pg_current_snapshot())::text as xmax').then(
          (result) => {
            if (listening) armAt(BigInt(result.rows[0]?.xmax ?? '0'));
          },
          () => stopTaps(),
        );
      };
      for (const consumer of this.consumers) {
        if (consumer.fromNotification) {
          taps.set(consumer.name, new NotificationTap(consumer, this.logger.child({ consumer: consumer.name, environment }), this.abort.signal, rearm));
        }
      }
      client.on('notification', (message) => {
        // Deliveries from the notification first: the reads the wake-ups start can wait.
        if (taps.size > 0) {
          const note = parseNote(message.payload, environment);
          for (const tap of taps.values()) {
            if (note) tap.push(note);
            else tap.disarm('a notification without a position'); // e.g. from an older version's append
          }
        }
        for (const wake of this.wakers.get(environment) ?? []) wake();
      });
      await client.connect();
      await client.query(`listen ${CHANNEL}`);
      // Every transaction that commits from now on is notified here; the ones before have
      // xids below this xmax, and the read must pass them before anything goes ahead.
      const armed = await client.query<{ xmax: string }>('select pg_snapshot_xmax(pg_current_snapshot())::text as xmax');
      for (const tap of taps.values()) tap.armedAt = BigInt(armed.rows[0]?.xmax ?? '0');
      this.listeners.push(client);
      for (const consumer of this.consumers) this.loops.push(this.run(consumer, environment));
    }
  }

  async close(): Promise<void> {
    this.abort.abort();
    for (const wakers of this.wakers.values()) for (const wake of wakers) wake();
    await Promise.allSettled(this.loops);
    await Promise.allSettled(this.listeners.map((client) => client.end()));
  }

  async readSince(environment: Environment, afterEventId: string | null, limit: number, filter?: EventFilter): Promise<BusEvent[] | null> {
    const db = this.databases.environments[environment];
    let after: { xid: string; id: number } = { xid: '0', id: 0 };
    if (afterEventId !== null) {
      const id = outboxIdOf(afterEventId);
      if (id === null) return null;
      const found = await sql<{ xid: string; id: number; tenant_id: string }>`
        select xid::text as xid, id, tenant_id from bus.outbox where id = ${id}`.execute(db);
      const row = found.rows[0];
      if (!row || (filter && row.tenant_id !== filter.tenantId)) return null;
      after = row;
    }
    return (await this.readBatch(db, after, limit, filter)).map((row) => toEvent(row, environment));
  }

  /**
   * Deletes events older than the retention that every consumer has passed: they are
   * the history `readSince` replays from, so they stay at least `retentionHours`.
   */
  async prune(retentionHours: number): Promise<number> {
    let removed = 0;
    for (const environment of ENVIRONMENTS) {
      const result = await sql`
        delete from bus.outbox o
        where o.occurred_at < now() - make_interval(hours => ${retentionHours})
          and not exists (select 1 from bus.consumer_cursor c where (c.xid, c.id) < (o.xid, o.id))
          and not exists (select 1 from bus.dead_letter d where d.event_id = o.id)`.execute(this.databases.environments[environment]);
      removed += Number(result.numAffectedRows ?? 0);
    }
    return removed;
  }

  async status(name: string, tenantId?: string): Promise<ConsumerStatus[]> {
    const ofTenant = tenantId === undefined ? sql`` : sql`and o.tenant_id = ${tenantId}`;
    return Promise.all(
      ENVIRONMENTS.map(async (environment) => {
        const db = this.databases.environments[environment];
        const cursor = await this.cursorOf(db, name);
        const pending = await sql<{ n: number; oldest: Date | null }>`
          select count(*)::int as n, min(o.occurred_at) as oldest
          from bus.outbox o where (o.xid, o.id) > (${cursor.xid}::xid8, ${cursor.id}) ${ofTenant}`.execute(db);
        const dead = await sql<{ n: number }>`
          select count(*)::int as n from bus.dead_letter d join bus.outbox o on o.id = d.event_id
          where d.consumer = ${name} ${ofTenant}`.execute(db);
        return {
          consumer: name,
          environment,
          pending: pending.rows[0]?.n ?? 0,
          lastDeliveredAt: cursor.last_delivered_at?.toISOString() ?? null,
          deadLetters: dead.rows[0]?.n ?? 0,
          oldestPendingAt: pending.rows[0]?.oldest?.toISOString() ?? null,
          // Environment-wide (the event in hand may be another tenant's): the cause, not the event, is shown.
          failing: cursor.failing_since
            ? { since: cursor.failing_since.toISOString(), attempts: cursor.failing_attempts, error: cursor.failing_error ?? '' }
            : null,
        };
      }),
    );
  }

  async redeliverDeadLetters(name: string, handler: EventHandler): Promise<{ delivered: DeadLetter[]; remaining: DeadLetter[] }> {
    const delivered: DeadLetter[] = [];
    const remaining: DeadLetter[] = [];
    for (const environment of ENVIRONMENTS) {
      const db = this.databases.environments[environment];
      const rows = await sql<OutboxRow & { attempts: number; error: string; created_at: Date }>`
        select o.id, o.xid::text as xid, o.type, o.tenant_id, o.owner_id, o.actor, o.data, o.occurred_at, d.attempts, d.error, d.created_at
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
        await sql`delete from bus.dead_letter where consumer = ${name} and event_id = ${row.id}`.execute(db);
        delivered.push(letter);
      }
    }
    return { delivered, remaining };
  }

  private async readBatch(db: Db, after: { xid: string; id: number }, limit: number, filter?: EventFilter): Promise<OutboxRow[]> {
    const tenant = filter ? sql`and tenant_id = ${filter.tenantId}` : sql``;
    const owner = filter?.ownerId !== undefined ? sql`and owner_id = ${filter.ownerId}` : sql``;
    const result = await sql<OutboxRow>`
      select id, xid::text as xid, type, tenant_id, owner_id, actor, data, occurred_at
      from bus.outbox
      where (xid, id) > (${after.xid}::xid8, ${after.id})
        and xid < pg_snapshot_xmin(pg_current_snapshot())
        ${tenant} ${owner}
      order by outbox.xid, outbox.id
      limit ${limit}`.execute(db);
    // Order by the table column: the text alias "xid" would sort 1000 before 999.
    return result.rows;
  }

  /**
   * The consumer's next rows (as `readBatch`), and the xmin they were read under: every
   * transaction below it has ended.
   */
  private async readPending(db: Db, after: { xid: string; id: number }, limit: number): Promise<{ rows: OutboxRow[]; horizon: bigint | null }> {
    const result = await sql<OutboxRow & { horizon: string | null }>`
      select h.horizon::text as horizon, o.id, o.xid, o.type, o.tenant_id, o.owner_id, o.actor, o.data, o.occurred_at
      from (select pg_snapshot_xmin(pg_current_snapshot()) as horizon) h
      left join lateral (
        select id, xid::text as xid, type, tenant_id, owner_id, actor, data, occurred_at
        from bus.outbox
        where (xid, id) > (${after.xid}::xid8, ${after.id}) and xid < h.horizon
        order by outbox.xid, outbox.id
        limit ${limit}
      ) o on true`.execute(db);
    const first = result.rows[0];
    const horizon = first?.horizon ? BigInt(first.horizon) : null;
    return { rows: result.rows.filter((row) => row.id !== null), horizon };
  }

  private async cursorOf(db: Db, name: string): Promise<CursorRow> {
    await sql`insert into bus.consumer_cursor (consumer) values (${name}) on conflict do nothing`.execute(db);
    const result = await sql<CursorRow>`
      select xid::text as xid, id, last_delivered_at, failing_since, failing_attempts, failing_error
      from bus.consumer_cursor where consumer = ${name}`.execute(db);
    return result.rows[0] ?? { xid: '0', id: 0, last_delivered_at: null, failing_since: null, failing_attempts: 0, failing_error: null };
  }

  /** Says (or, with null, unsays) that the consumer is stuck failing. Best effort: the database may be what fails. */
  private async setFailing(db: Db, name: string, failing: { attempts: number; error: string } | null): Promise<void> {
    const update = failing
      ? sql`update bus.consumer_cursor set failing_since = coalesce(failing_since, now()), failing_attempts = ${failing.attempts},
              failing_error = ${failing.error.slice(0, 1000)} where consumer = ${name}`
      : sql`update bus.consumer_cursor set failing_since = null, failing_attempts = 0, failing_error = null
              where consumer = ${name} and failing_since is not null`;
    await update.execute(db).catch(() => undefined);
  }

  private async run(consumer: Consumer, environment: Environment): Promise<void> {
    const db = this.databases.environments[environment];
    const log = this.logger.child({ consumer: consumer.name, environment });
    const signal = this.abort.signal;
    let wake: (() => void) | undefined;
    const wakers = this.wakers.get(environment) as Set<() => void>;
    let poked = false;
    let wokenByNotify = false;
    let idleWaitMs = RECHECK_MS;
    // Kept even if the listener drops it: what went ahead must still be skipped by the read.
    const tap = this.taps.get(environment)?.get(consumer.name);
    const onWake = () => {
      poked = true;
      wokenByNotify = true;
      wake?.();
    };
    wakers.add(onWake);
    try {
      const saved = await this.persistently(log, 'reading the cursor', () => this.cursorOf(db, consumer.name));
      // Left by a process that stopped while failing; said again at once if it still fails.
      await this.setFailing(db, consumer.name, null);
      let cursor = { xid: saved.xid, id: saved.id };
      if (tap) tap.position = { xid: BigInt(cursor.xid), id: cursor.id };
      while (!signal.aborted) {
        poked = false;
        let rows: OutboxRow[];
        let horizon: bigint | null;
        try {
          ({ rows, horizon } = await this.readPending(db, cursor, BATCH));
        } catch (error) {
          if (signal.aborted) break;
          log.warn({ err: error }, 'outbox read failed; retrying');
          await sleep(POLL_MS, signal);
          continue;
        }
        const wanted = consumer.types ? rows.filter((row) => consumer.types?.has(row.type)) : rows;
        if (tap) {
          // One row at a time, between the deliveries from notifications: skip what went
          // ahead, deliver the rest, and let the notifications behind each row go.
          for (const row of rows) {
            if (signal.aborted) return;
            await tap.exclusive(async () => {
              if (!tap.ahead.has(row.id) && (!consumer.types || consumer.types.has(row.type))) {
                await this.deliver(consumer, db, row, environment, log);
              }
              tap.passed({ xid: BigInt(row.xid), id: row.id });
            });
          }
          if (rows.length < BATCH && horizon !== null) tap.caughtUp(horizon);
          tap.drain();
        } else if (consumer.batchHandler && wanted.length > 1 && (await this.deliverBatch(consumer, wanted, environment, log))) {
          // delivered together
        } else {
          for (const row of wanted) {
            if (signal.aborted) return;
            await this.deliver(consumer, db, row, environment, log);
          }
        }
        if (signal.aborted) return;
        const last = rows[rows.length - 1];
        if (last) cursor = { xid: last.xid, id: last.id };
        if (rows.length > 0) {
          const saving = cursor;
          await this.persistently(log, 'saving the cursor', () =>
            sql`update bus.consumer_cursor set xid = ${saving.xid}::xid8, id = ${saving.id}, last_delivered_at = now()
                where consumer = ${consumer.name}`.execute(db),
          );
        }
        if (rows.length < BATCH && !poked) {
          // A NOTIFY'd row can still be hidden behind an older transaction that is about to
          // end without notifying (a cursor update, a login): look again soon after any
          // activity, backing off to the plain poll when all is quiet.
          const pollMs = this.options.pollMs ?? POLL_MS;
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
      wakers.delete(onWake);
    }
  }

  /** One try at the whole batch; false when it failed (the caller then goes event by event). */
  private async deliverBatch(consumer: Consumer, rows: OutboxRow[], environment: Environment, log: Logger): Promise<boolean> {
    try {
      await consumer.batchHandler?.(rows.map((row) => toEvent(row, environment)));
      return true;
    } catch (error) {
      if (this.abort.signal.aborted) throw error;
      log.warn({ err: error, events: rows.length }, 'batch failed; retrying its events one by one');
      return false;
    }
  }

  /**
   * Hands one event to the handler until it passes or is set aside. `tries` counts every
   * failure (for the backoff and the logs), `counted` those that may make a dead letter.
   */
  private async deliver(consumer: Consumer, db: Db, row: OutboxRow, environment: Environment, log: Logger): Promise<void> {
    const event = toEvent(row, environment);
    let tries = 0;
    let counted = 0;
    let lastError: unknown;
    while (true) {
      try {
        await consumer.handler(event);
        if (tries > 0) {
          log.info({ event_id: event.event_id, failedTries: tries }, 'event handled after failed tries');
          await this.setFailing(db, consumer.name, null);
        }
        return;
      } catch (error) {
        if (this.abort.signal.aborted) throw error; // shutting down: the event stays pending
        lastError = error;
        tries++;
        const counts = consumer.deadLetter === 'any-failure' || error instanceof PoisonEventError;
        if (counts) counted++;
        if (counts && counted >= consumer.maxAttempts) break;
        const retryInMs = this.backoff(tries);
        const context = { err: error, event_id: event.event_id, attempt: tries, counted, maxAttempts: consumer.maxAttempts, retryInMs };
        if (counts) log.warn(context, 'event handler failed');
        // Not the event's fault: retried until it passes; later events wait (they would fail the same way).
        else log.warn(context, 'event handler failed, not on the event itself (store or database down?): retrying until it passes');
        await this.setFailing(db, consumer.name, { attempts: tries, error: messageOf(error) });
        await sleep(retryInMs, this.abort.signal);
        if (this.abort.signal.aborted) throw new ShuttingDown();
      }
    }
    log.error({ event_id: event.event_id, attempts: tries, err: lastError }, 'event set aside as a dead letter');
    await this.persistently(log, 'setting aside a dead letter', () =>
      sql`insert into bus.dead_letter (consumer, event_id, attempts, error)
          values (${consumer.name}, ${row.id}, ${tries}, ${messageOf(lastError)})
          on conflict do nothing`.execute(db),
    );
    await this.setFailing(db, consumer.name, null);
  }
}
