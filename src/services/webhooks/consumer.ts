import type { Databases } from '../../adapters/db/pg.ts';
import type { BusEvent } from '../../core/events.ts';
import { FILE_EVENT_TYPES } from '../../core/events.ts';
import { newId } from '../../core/ids.ts';
import { ENVIRONMENTS } from '../../core/principal.ts';
import type { BusConsumer } from '../../platform/module.ts';
import { insertDeliveries, type NewDelivery } from './repo/deliveries.repo.ts';
import { enabledEndpointsOf } from './repo/endpoints.repo.ts';

export const WEBHOOKS_CONSUMER = 'webhooks';

/**
 * The durable consumer of file events: one delivery row per event and enabled endpoint of
 * the event's tenant that asked for its type, in the event's own environment database. It
 * only writes rows (idempotent on event and endpoint, so a redelivered event adds nothing);
 * sending is the worker's, so a failing endpoint never holds this consumer's cursor.
 */
export function webhooksConsumer(databases: Databases, wake: () => void): BusConsumer {
  return {
    name: WEBHOOKS_CONSUMER,
    batch: true,
    handle: async (events) => {
      let inserted = 0;
      for (const environment of ENVIRONMENTS) {
        const mine = events.filter((event) => event.environment === environment);
        if (mine.length === 0) continue;
        const db = databases.environments[environment];
        const endpoints = await enabledEndpointsOf(db, [...new Set(mine.map((event) => event.tenant_id))]);
        const rows: NewDelivery[] = [];
        for (const event of mine) {
          for (const endpoint of endpoints) {
            if (endpoint.tenant_id !== event.tenant_id || !endpoint.events.includes(event.type)) continue;
            rows.push({ tenant_id: event.tenant_id, id: newId('dlv'), endpoint_id: endpoint.id, event_id: event.event_id, type: event.type, payload: payloadOf(event), traceparent: event.traceparent ?? null });
          }
        }
        inserted += await insertDeliveries(db, rows);
      }
      if (inserted > 0) wake();
    },
    // A failure here is the database: retried until it passes, never set aside.
    options: { types: FILE_EVENT_TYPES, deadLetter: 'poison-only' },
  };
}

/** The delivery body of the contract: `{id, type, occurred_at, environment, data: {file, actor}}`. */
export function payloadOf(event: BusEvent): string {
  const file = (event.data as { file?: unknown }).file ?? null;
  return JSON.stringify({ id: event.event_id, type: event.type, occurred_at: event.occurred_at, environment: event.environment, data: { file, actor: event.actor } });
}
