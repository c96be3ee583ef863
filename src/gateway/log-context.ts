import type { FastifyRequest } from 'fastify';
import type { Principal } from '../core/principal.ts';

/**
 * Once a request's principal is known, its log lines carry the tenant and environment
 * (never a credential): an operator then finds one tenant's requests in Loki by field (`| json | tenant_id=...`), not by label.
 */
export function logWithPrincipal(request: FastifyRequest, principal: Principal): void {
  if ('tenantId' in principal) request.log = request.log.child({ tenant_id: principal.tenantId, environment: principal.environment });
}
