import { Type } from '@sinclair/typebox';
import { tenantPrincipalOf } from '../../../gateway/auth.ts';
import { type Route, route } from '../../../gateway/routes.ts';
import type { AuditLog } from '../domain/audit.ts';
import { actorFor } from '../domain/audit.ts';

/**
 * What other services reach of identity over HTTP (distributed mode), never through the
 * gateway: `POST /internal/audit`, an entry of the caller's tenant's audit trail (AuditPort),
 * for the principal the calling service acts for.
 */
export function auditInternalRoutes(audit: AuditLog): Route[] {
  return [
    route({
      method: 'POST',
      url: '/internal/audit',
      at: 'root',
      auth: ['account_key', 'application_key', 'user'],
      publicForApplications: true,
      schema: {
        hide: true,
        body: Type.Object({
          type: Type.Union([Type.Literal('export_created'), Type.Literal('export_downloaded')]),
          ip: Type.Union([Type.String({ maxLength: 100 }), Type.Null()]),
          detail: Type.Record(Type.String(), Type.Unknown()),
        }),
        response: { 204: Type.Null() },
      },
      handler: async (request, reply) => {
        const principal = tenantPrincipalOf(request);
        await audit.recordAlone(principal.environment, principal.tenantId, { type: request.body.type, actor: actorFor(principal), ip: request.body.ip, detail: request.body.detail });
        return reply.code(204).send();
      },
    }),
  ];
}
