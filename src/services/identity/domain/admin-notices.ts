import { sql } from 'kysely';
import { type Databases, withTenant } from '../../../adapters/db/pg.ts';
import type { Mailer } from '../../../core/ports.ts';
import type { Environment } from '../../../core/principal.ts';
import type { AdminNotice, AdminNoticePort } from '../../../core/service-ports.ts';
import type { AuditLog, AuditType } from './audit.ts';

/**
 * The AdminNoticePort on identity's own tables: the audit entry commits first, then each admin
 * user of the tenant and environment gets the mail. A mail that fails is logged by the caller;
 * the audit entry stays.
 */
export class AdminNotices implements AdminNoticePort {
  constructor(
    private readonly databases: Databases,
    private readonly audit: AuditLog,
    private readonly mailer: Mailer,
  ) {}

  async notify(environment: Environment, tenantId: string, notice: AdminNotice): Promise<void> {
    const admins = await withTenant(this.databases.environments[environment], tenantId, async (trx) => {
      await this.audit.record(trx, tenantId, { type: notice.type as AuditType, actor: { type: 'system', id: 'webhooks' }, ip: null, detail: notice.detail });
      const result = await sql<{ email: string }>`select email from identity.app_user where tenant_id = ${tenantId} and role = 'admin' order by email`.execute(trx);
      return result.rows.map((row) => row.email);
    });
    for (const to of admins) await this.mailer.send({ to, subject: notice.subject, text: notice.text });
  }
}
