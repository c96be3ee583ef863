import { sql } from 'kysely';
import type { Db } from '../db/pg.ts';
import type { Position } from './outbox-row.ts';

/** A consumer's durable state in one environment database: where it is, and whether it is stuck. */
export interface CursorRow {
  xid: string;
  id: number;
  last_delivered_at: Date | null;
  failing_since: Date | null;
  failing_attempts: number;
  failing_error: string | null;
}

/** The consumer's cursor, created at the start of the outbox when it has none. */
export async function cursorOf(db: Db, name: string): Promise<CursorRow> {
  await sql`insert into bus.consumer_cursor (consumer) values (${name}) on conflict do nothing`.execute(db);
  return readCursor(db, name);
}

/**
 * The consumer's cursor as it is, without making one: the start of the outbox when it has
 * none. For status, which must not leave a cursor behind for a name that never consumes
 * durably (an ephemeral consumer, a typo): that cursor would hold back every prune.
 */
export async function readCursor(db: Db, name: string): Promise<CursorRow> {
  const result = await sql<CursorRow>`
      select xid::text as xid, id, last_delivered_at, failing_since, failing_attempts, failing_error
      from bus.consumer_cursor where consumer = ${name}`.execute(db);
  return result.rows[0] ?? { xid: '0', id: 0, last_delivered_at: null, failing_since: null, failing_attempts: 0, failing_error: null };
}

/**
 * Moves the cursor past every row up to `cursor`: they are delivered (or set aside).
 *
 * Committed without waiting for the WAL flush (synchronous_commit off, for this statement's
 * transaction only): delivery is at least once, so a cursor move lost to a database crash
 * (at most the last ~200 ms of them) only redelivers events, which consumers must tolerate
 * anyway. A restart of Bantu loses nothing: the move is committed, only its flush is late.
 * That spares every consumer one disk flush per batch, on the path of every write.
 */
export async function saveCursor(db: Db, name: string, cursor: Position): Promise<void> {
  await sql`with unflushed as (select set_config('synchronous_commit', 'off', true))
              update bus.consumer_cursor set xid = ${cursor.xid}::xid8, id = ${cursor.id}, last_delivered_at = now()
              from unflushed where consumer = ${name}`.execute(db);
}

/** Says (or, with null, unsays) that the consumer is stuck failing. Best effort: the database may be what fails. */
export async function setFailing(db: Db, name: string, failing: { attempts: number; error: string } | null): Promise<void> {
  const update = failing
    ? sql`update bus.consumer_cursor set failing_since = coalesce(failing_since, now()), failing_attempts = ${failing.attempts},
              failing_error = ${failing.error.slice(0, 1000)} where consumer = ${name}`
    : sql`update bus.consumer_cursor set failing_since = null, failing_attempts = 0, failing_error = null
              where consumer = ${name} and failing_since is not null`;
  await update.execute(db).catch(() => undefined);
}

/**
 * Moves the cursor up to the outbox row of event `outboxId`, never back: the mirror of a
 * consumer whose progress lives elsewhere (a JetStream durable consumer), so that status and
 * the prune see how far it got. A redelivered older event leaves it where it is. Unflushed,
 * like `saveCursor`: a lost move only makes status count a few events pending again.
 */
export async function advanceCursor(db: Db, name: string, outboxId: number): Promise<void> {
  await sql`with unflushed as (select set_config('synchronous_commit', 'off', true))
              update bus.consumer_cursor c set xid = o.xid, id = o.id, last_delivered_at = now()
              from bus.outbox o, unflushed
              where c.consumer = ${name} and o.id = ${outboxId} and (c.xid, c.id) <= (o.xid, o.id)`.execute(db);
}
