import type { BusEvent } from '../../core/events.ts';
import type { Environment } from '../../core/principal.ts';

/** A row of bus.outbox as the bus selects it (the xid as text: xid8 has no JS type). */
export interface OutboxRow {
  id: number;
  xid: string;
  type: string;
  tenant_id: string;
  owner_id: string | null;
  actor: BusEvent['actor'];
  data: Record<string, unknown>;
  occurred_at: Date;
  traceparent: string | null;
}

/** A place in (xid, id) delivery order: a cursor, or the row a replay starts after. */
export interface Position {
  xid: string;
  id: number;
}

export function eventIdOf(id: number | bigint): string {
  return `evt_${id.toString().padStart(12, '0')}`;
}

/** Parses an event id; null when it is not one of ours. */
export function outboxIdOf(eventId: string): number | null {
  const match = /^evt_(\d{1,18})$/.exec(eventId);
  return match ? Number(match[1]) : null;
}

export function toEvent(row: OutboxRow, environment: Environment): BusEvent {
  return {
    event_id: eventIdOf(row.id),
    type: row.type,
    tenant_id: row.tenant_id,
    environment,
    occurred_at: row.occurred_at.toISOString(),
    actor: row.actor,
    owner_id: row.owner_id,
    data: row.data,
    ...(row.traceparent ? { traceparent: row.traceparent } : {}),
  };
}
