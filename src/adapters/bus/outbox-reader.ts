import { sql } from 'kysely';
import type { BusEvent } from '../../core/events.ts';
import type { EventFilter } from '../../core/ports.ts';
import type { Environment } from '../../core/principal.ts';
import type { Db } from '../db/pg.ts';
import { type OutboxRow, outboxIdOf, type Position, toEvent } from './outbox-row.ts';

/**
 * Reads of the outbox in delivery order, (xid, id), and only what is safely visible: rows
 * whose writing transaction is older than every running one that could still write here
 * (the horizon below). A plain `id > cursor` reader would silently skip a row whose
 * transaction got a smaller id but committed after a larger one.
 *
 * The horizon is this database's, not the cluster's. The snapshot's xmin counts every running
 * transaction of the PostgreSQL server, in any database: one writer left open elsewhere (another
 * application's database, an `idle in transaction` session, another installation on a shared
 * server) held every consumer back for as long as it ran. A running xid holds the horizon only
 * if it belongs to a session of this database (pg_stat_activity, read after the snapshot), or
 * if it ended since the snapshot (then its database is unknown and its rows unseen: wait for
 * the next read). A prepared transaction (two-phase commit, which Bantu does not use) has no
 * session, and would not hold it.
 */
const HORIZON = sql`(
  select coalesce(
    (select min(running) from pg_snapshot_xip(snap.s) as running
      where case when running::xid in (select backend_xid from here) then true
                 else pg_xact_status(running) is distinct from 'in progress' end),
    pg_snapshot_xmax(snap.s))
  from (select pg_current_snapshot() as s) snap)`;

/** The sessions of this database with a transaction id: read once per statement, after its snapshot (a materialized CTE, first read by HORIZON). */
const HERE = sql`here as materialized (
  select backend_xid from pg_stat_activity
  where datid = (select oid from pg_database where datname = current_database()) and backend_xid is not null and pid <> pg_backend_pid())`;

/** Rows after `after`, optionally one tenant's (and one owner's). */
export async function readBatch(db: Db, after: Position, limit: number, filter?: EventFilter): Promise<OutboxRow[]> {
  const tenant = filter ? sql`and tenant_id = ${filter.tenantId}` : sql``;
  const owner = filter?.ownerId !== undefined ? sql`and owner_id = ${filter.ownerId}` : sql``;
  const result = await sql<OutboxRow>`
      with ${HERE}
      select id, xid::text as xid, type, tenant_id, owner_id, actor, data, occurred_at, traceparent
      from bus.outbox
      where (xid, id) > (${after.xid}::xid8, ${after.id})
        and xid < ${HORIZON}
        ${tenant} ${owner}
      order by outbox.xid, outbox.id
      limit ${limit}`.execute(db);
  // Order by the table column: the text alias "xid" would sort 1000 before 999.
  return result.rows;
}

/**
 * A consumer's next rows (as `readBatch`), and the horizon they were read under: every
 * transaction of this database below it has ended.
 */
export async function readPending(db: Db, after: Position, limit: number): Promise<{ rows: OutboxRow[]; horizon: bigint | null }> {
  const result = await sql<OutboxRow & { horizon: string | null }>`
      with ${HERE}
      select h.horizon::text as horizon, o.id, o.xid, o.type, o.tenant_id, o.owner_id, o.actor, o.data, o.occurred_at, o.traceparent
      from (select ${HORIZON} as horizon) h
      left join lateral (
        select id, xid::text as xid, type, tenant_id, owner_id, actor, data, occurred_at, traceparent
        from bus.outbox
        where (xid, id) > (${after.xid}::xid8, ${after.id}) and xid < h.horizon
        order by outbox.xid, outbox.id
        limit ${limit}
      ) o on true`.execute(db);
  const first = result.rows[0];
  const horizon = first?.horizon ? BigInt(first.horizon) : null;
  return { rows: result.rows.filter((row) => row.id !== null), horizon };
}

/** Where an ephemeral consumer starts, and which rows after that position committed before its start. */
export interface Present {
  /** Just behind every row that can still commit: each row whose transaction had ended by the start (xid below the snapshot's xmin) is before it. */
  position: Position;
  /**
   * True for a row at or after `position` that had committed by the start all the same: its
   * transaction began after the oldest one then running (xmin is cluster-wide, so any long
   * transaction, in any database, holds it back) and ended before the start.
   */
  committedBefore: (xid: string) => boolean;
}

/** The present, from the snapshot `xmin:xmax:xip,...`: a row is past if its xid is below xmax and was not running then. */
export async function presentPosition(db: Db): Promise<Present> {
  const result = await sql<{ snapshot: string }>`select pg_current_snapshot()::text as snapshot`.execute(db);
  const [xminText = '1', xmaxText = '1', runningText = ''] = (result.rows[0]?.snapshot ?? '').split(':');
  const xmin = BigInt(xminText);
  const xmax = BigInt(xmaxText);
  const running = new Set(runningText.split(',').filter(Boolean));
  return {
    position: { xid: String(xmin - 1n), id: Number.MAX_SAFE_INTEGER },
    committedBefore: (xid) => BigInt(xid) < xmax && !running.has(xid),
  };
}

/** `EventBus.readSince` on one environment's database. */
export async function readSince(db: Db, environment: Environment, afterEventId: string | null, limit: number, filter?: EventFilter): Promise<BusEvent[] | null> {
  let after: Position = { xid: '0', id: 0 };
  if (afterEventId !== null) {
    const id = outboxIdOf(afterEventId);
    if (id === null) return null;
    const found = await sql<{ xid: string; id: number; tenant_id: string }>`
        select xid::text as xid, id, tenant_id from bus.outbox where id = ${id}`.execute(db);
    const row = found.rows[0];
    if (!row || (filter && row.tenant_id !== filter.tenantId)) return null;
    after = row;
  }
  return (await readBatch(db, after, limit, filter)).map((row) => toEvent(row, environment));
}
