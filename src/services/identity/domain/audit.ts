import type { Databases, Tx } from '../../../adapters/db/pg.ts';
import { withTenant } from '../../../adapters/db/pg.ts';
import { newId } from '../../../core/ids.ts';
import { pageOf } from '../../../core/pagination.ts';
import { actorOf, type Environment, type Principal } from '../../../core/principal.ts';
import * as auditRepo from '../repo/audit.repo.ts';

/**
 * The audit trail of security events, per tenant and environment. Events that go with a
 * change are written in the change's transaction; a failed login has a transaction of its own.
 * Details never carry a password, token or key.
 */
export type AuditType =
  | 'login_succeeded'
  | 'login_failed'
  | 'login_throttled'
  | 'user_created'
  | 'user_updated'
  | 'user_deleted'
  | 'password_changed'
  | 'password_reset_requested'
  | 'password_reset'
  | 'refresh_token_reused'
  | 'key_created'
  | 'key_revoked'
  // Written for the exports service (AuditPort).
  | 'export_created'
  | 'export_downloaded'
  | 'webhook_disabled';

export interface AuditEntry {
  type: AuditType;
  actor: { type: string; id: string } | null;
  ip: string | null;
  detail?: Record<string, unknown>;
}

/** Where a request came from, for the audit trail and per-address limits. */
export interface RequestContext {
  ip: string;
}

export interface AuditEvent {
  id: string;
  type: string;
  actor: { type: string; id: string } | null;
  ip: string | null;
  created_at: string;
  detail: Record<string, unknown>;
}

export function actorFor(principal: Principal | null): AuditEntry['actor'] {
  return principal ? actorOf(principal) : null;
}

export class AuditLog {
  constructor(private readonly databases: Databases) {}

  /** Inside a tenant-bound transaction. */
  async record(trx: Tx, tenantId: string, entry: AuditEntry): Promise<void> {
    await this.insert(tenantId, entry).execute(trx);
  }

  /** The entry as a statement, to go in a tenantBatch with the change it records. */
  insert(tenantId: string, entry: AuditEntry) {
    return auditRepo.auditEventInsert(this.row(tenantId, entry));
  }

  /** The row the entry becomes, for a statement that writes it together with its change. */
  row(tenantId: string, entry: AuditEntry): auditRepo.NewAuditEvent {
    return { id: newId('aud'), tenant_id: tenantId, type: entry.type, actor: entry.actor, ip: entry.ip, detail: entry.detail ?? {} };
  }

  /** In a transaction of its own, for events with no change to go with. */
  async recordAlone(environment: Environment, tenantId: string, entry: AuditEntry): Promise<void> {
    await withTenant(this.databases.environments[environment], tenantId, (trx) => this.record(trx, tenantId, entry));
  }

  async list(environment: Environment, tenantId: string, limit: number, before?: string): Promise<{ data: AuditEvent[]; next_cursor: string | null }> {
    const rows = await withTenant(this.databases.environments[environment], tenantId, (trx) => auditRepo.listAuditEvents(trx, tenantId, limit + 1, before));
    return pageOf(rows, limit, (row) => ({
      id: row.id,
      type: row.type,
      actor: row.actor,
      ip: row.ip,
      created_at: row.created_at.toISOString(),
      detail: row.detail,
    }));
  }
}
