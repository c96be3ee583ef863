import { sql } from 'kysely';
import type { Tx } from '../../../adapters/db/pg.ts';

export interface AuditRow {
  id: string;
  type: string;
  actor: { type: string; id: string } | null;
  ip: string | null;
  detail: Record<string, unknown>;
  created_at: Date;
}

export interface NewAuditEvent {
  id: string;
  tenant_id: string;
  type: string;
  actor: { type: string; id: string } | null;
  ip: string | null;
  detail: Record<string, unknown>;
}

/** The insert as a statement, for a tenantBatch. */
export function auditEventInsert(event: NewAuditEvent) {
  return sql`
    insert into identity.audit_event (id, tenant_id, type, actor, ip, detail)
    values (${event.id}, ${event.tenant_id}, ${event.type}, ${event.actor === null ? null : JSON.stringify(event.actor)}::jsonb,
            ${event.ip}, ${JSON.stringify(event.detail)}::jsonb)`;
}

export async function listAuditEvents(trx: Tx, tenantId: string, limit: number, before?: string): Promise<AuditRow[]> {
  const result = await sql<AuditRow>`
    select id, type, actor, ip, detail, created_at from identity.audit_event
    where tenant_id = ${tenantId} and ${before === undefined ? sql`true` : sql`id < ${before}`}
    order by id desc limit ${limit}`.execute(trx);
  return result.rows;
}
