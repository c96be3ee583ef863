import { sql } from 'kysely';
import type { BusEvent, NewEvent } from '../../core/events.ts';
import type { Environment } from '../../core/principal.ts';
import type { Tx } from '../db/pg.ts';
import { type OutboxRow, toEvent } from './outbox-row.ts';

/** The channel every append notifies, in the same transaction: listeners hear of it only on commit. */
export const CHANNEL = 'bantu_outbox';
/** A notification's payload must stay under 8000 bytes; larger events go by the read only. */
const NOTIFY_PAYLOAD_MAX = 7900;

/**
 * Writes the event into the caller's transaction, and a NOTIFY of it. The NOTIFY carries the
 * row's position and type, and the event itself when it may be delivered from the
 * notification (see NotificationTap).
 */
export async function appendEvent(tx: Tx, environment: Environment, event: NewEvent): Promise<BusEvent> {
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
