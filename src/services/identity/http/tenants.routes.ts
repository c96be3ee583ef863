import { decodeCursor, encodeCursor, ListQuery, Page } from '../../../core/pagination.ts';
import { type Route, route } from '../../../gateway/routes.ts';
import type { TenantsService } from '../domain/tenants.service.ts';
import { CreatedTenant, CreateTenantBody, Tenant } from './tenants.schemas.ts';

export function tenantsRoutes(tenants: TenantsService): Route[] {
  return [
    route({
      method: 'POST',
      url: '/tenants',
      auth: ['operator'],
      // 409 conflict: a tenant of that name exists.
      errors: [409],
      schema: {
        tags: ['tenants'],
        summary: 'Create a tenant (operator token)',
        description: 'Creates a client company with its first account and application key in each environment. The keys are shown only here.',
        body: CreateTenantBody,
        response: { 201: CreatedTenant },
      },
      handler: async (request, reply) => reply.code(201).send(await tenants.create(request.body.name.trim())),
    }),

    route({
      method: 'GET',
      url: '/tenants',
      auth: ['operator'],
      schema: { tags: ['tenants'], summary: 'List tenants, newest first (operator token)', querystring: ListQuery, response: { 200: Page(Tenant) } },
      handler: async (request) => {
        const { rows, more } = await tenants.list(request.query.limit, decodeCursor(request.query.cursor));
        const last = rows[rows.length - 1];
        return { data: rows, next_cursor: more && last ? encodeCursor(last.id) : null };
      },
    }),
  ];
}
