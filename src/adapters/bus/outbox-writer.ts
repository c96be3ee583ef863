import { type RawBuilder, sql } from 'kysely';
import type { BusEvent, NewEvent } from '../../core/events.ts';
import type { Environment } from '../../core/principal.ts';
import type { Tx } from '../db/pg.ts';
import { eventIdOf } from './outbox-row.ts';

/** The channel every append notifies, in the same transaction: listeners hear of it only on commit. */
export const CHANNEL = 'bantu_outbox';
/** A notification's payload must stay under 8000 bytes; larger events go by the read only. */
const NOTIFY_PAYLOAD_MAX = 7900;
/** What the payload adds around the event: its position (ids of up to 20 digits) and the event id. */
const PAYLOAD_FRAME_MAX = 160;

/**
 * The event's row and a NOTIFY of it, as one statement for the caller's transaction. The
 * NOTIFY carries the row's position and type, and the event itself when it may be delivered
 * from the notification (see NotificationTap). The event's time is set here, so that the
 * event in the notification (made here, around the row's id) and the event read back from
 * the row are the same to the character. `eventOf` gives the event, from the id the statement returns.
 */
export function appendStatement(environment: Environment, event: NewEvent): { statement: RawBuilder<{ id: number }>; eventOf(id: number): BusEvent } {
  const occurredAt = new Date();
  const traceparent = event.traceparent;
  // The event as toEvent makes it from the row, but for its first member (the id, known once inserted).
  const rest = {
    type: event.type,
    tenant_id: event.tenant_id,
    environment,
    occurred_at: occurredAt.toISOString(),
    actor: event.actor,
    owner_id: event.owner_id ?? null,
    data: event.data,
    ...(traceparent ? { traceparent } : {}),
  };
  const restJson = JSON.stringify(rest);
  const rides = Buffer.byteLength(restJson) + PAYLOAD_FRAME_MAX <= NOTIFY_PAYLOAD_MAX;
  // The event rides along only if no older transaction is running now: none can start later
  // (xids only grow), so nothing can come before it that has not committed first.
  const statement = sql<{ id: number }>`
    with appended as (
      insert into bus.outbox (type, tenant_id, owner_id, actor, data, occurred_at, traceparent)
      values (${event.type}, ${event.tenant_id}, ${event.owner_id ?? null}, ${JSON.stringify(event.actor)}::jsonb, ${JSON.stringify(event.data)}::jsonb, ${occurredAt}, ${traceparent ?? null})
      returning id, xid::text as xid
    )
    select appended.id, pg_notify(${CHANNEL},
      '{"id":' || appended.id || ',"xid":"' || appended.xid || '","type":' || ${JSON.stringify(event.type)}::text ||
      case when ${rides} and pg_snapshot_xmin(pg_current_snapshot()) >= pg_current_xact_id()
           then ',"event":{"event_id":"evt_' || lpad(appended.id::text, greatest(12, length(appended.id::text)), '0') || '",' || ${restJson.slice(1)}::text || '}'
           else '}' end)
    from appended`;
  return { statement, eventOf: (id) => ({ event_id: eventIdOf(id), ...rest }) };
}

/** Writes the event into the caller's transaction (see appendStatement). */
export async function appendEvent(tx: Tx, environment: Environment, event: NewEvent): Promise<BusEvent> {
  const { statement, eventOf } = appendStatement(environment, event);
  const result = await statement.execute(tx);
  return eventOf((result.rows[0] as { id: number }).id);
}
