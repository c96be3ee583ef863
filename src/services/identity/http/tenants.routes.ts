import type { FastifyInstance } from 'fastify';
import { decodeCursor, encodeCursor, ListQuery, Page } from '../../../core/pagination.ts';
import type { TenantsService } from '../domain/tenants.service.ts';
import { CreatedTenant, CreateTenantBody, Tenant } from './tenants.schemas.ts';

export function tenantsRoutes(tenants: TenantsService) {
  return async (app: FastifyInstance) => {
    app.post(
      '/tenants',
      {
        config: { auth: ['operator'] },
        schema: {
          tags: ['tenants'],
          summary: 'Create a tenant (operator token)',
          description: 'Creates a client company with its first account and application key in each environment. The keys are shown only here.',
          body: CreateTenantBody,
          response: { 201: CreatedTenant },
        },
      },
      async (request, reply) => {
        const { name } = request.body as { name: string };
        return reply.code(201).send(await tenants.create(name.trim()));
      },
    );

    app.get(
      '/tenants',
      {
        config: { auth: ['operator'] },
        schema: { tags: ['tenants'], summary: 'List tenants, newest first (operator token)', querystring: ListQuery, response: { 200: Page(Tenant) } },
      },
      async (request) => {
        const query = request.query as { limit: number; cursor?: string };
        const { rows, more } = await tenants.list(query.limit, decodeCursor(query.cursor));
        const last = rows[rows.length - 1];
        return { data: rows, next_cursor: more && last ? encodeCursor(last.id) : null };
      },
    );
  };
}
