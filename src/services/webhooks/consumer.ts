import type { Databases } from '../../adapters/db/pg.ts';
import type { BusEvent } from '../../core/events.ts';
import { FILE_EVENT_TYPES } from '../../core/events.ts';
import { newId } from '../../core/ids.ts';
import { ENVIRONMENTS, type Environment } from '../../core/principal.ts';
import type { BusConsumer } from '../../platform/module.ts';
import { type DeliveryRow, insertDeliveries, type NewDelivery } from './repo/deliveries.repo.ts';
import { type EndpointRow, enabledEndpointsOf } from './repo/endpoints.repo.ts';

export const WEBHOOKS_CONSUMER = 'webhooks';

/** The delivery worker of the same process, as the consumer sees it. */
export interface DeliveryHandOff {
  /** How many new deliveries to this endpoint the worker takes now, `granted` given already in this batch. */
  room(endpointId: string, granted: number): number;
  /** The lease the handed deliveries are written with. */
  leaseMs(): number;
  /** Takes deliveries committed leased to it. */
  adopt(environment: Environment, endpoint: EndpointRow, rows: DeliveryRow[]): void;
  /** Something is due in the database. */
  wake(): void;
}

/**
 * The durable consumer of file events: one delivery row per event and enabled endpoint of
 * the event's tenant that asked for its type, in the event's own environment database. It
 * only writes rows (idempotent on event and endpoint, so a redelivered event adds nothing);
 * sending is the worker's, so a failing endpoint never holds this consumer's cursor.
 *
 * The worker runs beside it, so the rows it has room for are written already leased to it and
 * handed over in memory: the claim that would find them, move their lease and read them back
 * is skipped (a third of the database work of a delivery). A process that dies before sending
 * them leaves them due when the lease ends, as claimed ones are.
 */
export function webhooksConsumer(databases: Databases, worker: DeliveryHandOff): BusConsumer {
  return {
    name: WEBHOOKS_CONSUMER,
    batch: true,
    handle: async (events) => {
      let dueNow = 0;
      for (const environment of ENVIRONMENTS) {
        const mine = events.filter((event) => event.environment === environment);
        if (mine.length === 0) continue;
        const db = databases.environments[environment];
        const endpoints = await enabledEndpointsOf(db, [...new Set(mine.map((event) => event.tenant_id))]);
        const rows: NewDelivery[] = [];
        const handed = new Map<EndpointRow, NewDelivery[]>();
        const leaseSeconds = worker.leaseMs() / 1000;
        let granted = 0;
        for (const endpoint of endpoints) {
          let room = worker.room(endpoint.id, granted);
          for (const event of mine) {
            if (endpoint.tenant_id !== event.tenant_id || !endpoint.events.includes(event.type)) continue;
            const row: NewDelivery = { tenant_id: event.tenant_id, id: newId('dlv'), endpoint_id: endpoint.id, event_id: event.event_id, type: event.type, payload: payloadOf(event), traceparent: event.traceparent ?? null };
            rows.push(row);
            if (room > 0) {
              room -= 1;
              granted += 1;
              row.leaseSeconds = leaseSeconds;
              const list = handed.get(endpoint) ?? [];
              list.push(row);
              handed.set(endpoint, list);
            } else dueNow += 1;
          }
        }
        const inserted = await insertDeliveries(db, rows);
        const now = new Date();
        for (const [endpoint, mineHanded] of handed) {
          // A redelivered event's rows were there already, in whatever state: not handed again.
          worker.adopt(environment, endpoint, mineHanded.filter((row) => inserted.has(row.id)).map((row) => handedRow(row, now)));
        }
      }
      if (dueNow > 0) worker.wake();
    },
    // A failure here is the database: retried until it passes, never set aside.
    options: { types: FILE_EVENT_TYPES, deadLetter: 'poison-only' },
  };
}

/** A delivery just written, as a claim would have read it back. */
function handedRow({ leaseSeconds: _lease, ...row }: NewDelivery, now: Date): DeliveryRow {
  return { ...row, attempt: 0, status: 'pending', response_status: null, error: null, duration_ms: null, created_at: now, first_failed_at: null, next_attempt_at: now, traceparent: row.traceparent ?? null };
}

/** The delivery body of the contract: `{id, type, occurred_at, environment, data: {file, actor}}`. */
export function payloadOf(event: BusEvent): string {
  const file = (event.data as { file?: unknown }).file ?? null;
  return JSON.stringify({ id: event.event_id, type: event.type, occurred_at: event.occurred_at, environment: event.environment, data: { file, actor: event.actor } });
}
