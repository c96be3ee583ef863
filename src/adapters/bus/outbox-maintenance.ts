import { sql } from 'kysely';
import type { ConsumerStatus } from '../../core/ports.ts';
import { type Databases, ENVIRONMENTS } from '../db/pg.ts';
import { readCursor } from './outbox-cursor.ts';

/** `EventBus.status`: per environment, from the consumer's cursor. */
export async function status(databases: Databases, name: string, tenantId?: string): Promise<ConsumerStatus[]> {
  const ofTenant = tenantId === undefined ? sql`` : sql`and o.tenant_id = ${tenantId}`;
  return Promise.all(
    ENVIRONMENTS.map(async (environment) => {
      const db = databases.environments[environment];
      const cursor = await readCursor(db, name);
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

/**
 * Deletes events older than the retention that every consumer has passed: they are
 * the history `readSince` replays from, so they stay at least `retentionHours`.
 */
export async function prune(databases: Databases, retentionHours: number): Promise<number> {
  let removed = 0;
  for (const environment of ENVIRONMENTS) {
    const result = await sql`
        delete from bus.outbox o
        where o.occurred_at < now() - make_interval(hours => ${retentionHours})
          and not exists (select 1 from bus.consumer_cursor c where (c.xid, c.id) < (o.xid, o.id))
          and not exists (select 1 from bus.dead_letter d where d.event_id = o.id)`.execute(databases.environments[environment]);
    removed += Number(result.numAffectedRows ?? 0);
  }
  return removed;
}
