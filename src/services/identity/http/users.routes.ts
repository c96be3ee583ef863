import type { Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { decodeCursor, ListQuery, Page } from '../../../core/pagination.ts';
import { principalOf } from '../../../gateway/auth.ts';
import type { AuditLog } from '../domain/audit.ts';
import type { UsersService } from '../domain/users.service.ts';
import type { TenantBound, UserPrincipal } from '../domain/users.ts';
import { AuditEvent, CreateUserBody, IdParams, UpdateMeBody, UpdateUserBody, User } from './identity.schemas.ts';

type Kinds = ('account_key' | 'application_key' | 'user')[];
const managers: Kinds = ['account_key', 'user', 'application_key'];
const tags = ['users'];

export function usersRoutes(users: UsersService, audit: AuditLog) {
  return async (app: FastifyInstance) => {
    app.get(
      '/users/me',
      { config: { auth: ['user'] }, schema: { tags, summary: 'The calling user (user token)', response: { 200: User } } },
      async (request) => users.me(principalOf(request) as UserPrincipal),
    );

    app.patch(
      '/users/me',
      {
        config: { auth: ['user'] },
        schema: {
          tags,
          summary: 'Change your name, email or password (user token)',
          description: 'Changing the email or password needs `current_password`. A new password ends every other session of the user.',
          body: UpdateMeBody,
          response: { 200: User },
        },
      },
      async (request) => users.updateMe(principalOf(request) as UserPrincipal, request.body as Static<typeof UpdateMeBody>, { ip: request.ip }),
    );

    app.get(
      '/users',
      {
        config: { auth: managers, scope: 'users:read' },
        schema: { tags, summary: 'List users, newest first (account key, admin, or application key with users:read)', querystring: ListQuery, response: { 200: Page(User) } },
      },
      async (request) => {
        const query = request.query as Static<typeof ListQuery>;
        return users.list(principalOf(request) as TenantBound, query.limit, decodeCursor(query.cursor));
      },
    );

    app.post(
      '/users',
      {
        config: { auth: managers, scope: 'users:write' },
        schema: { tags, summary: 'Create a user (account key, admin, or application key with users:write)', body: CreateUserBody, response: { 201: User } },
      },
      async (request, reply) => {
        const created = await users.create(principalOf(request) as TenantBound, request.body as Static<typeof CreateUserBody>, { ip: request.ip });
        return reply.code(201).send(created);
      },
    );

    app.get(
      '/users/:id',
      {
        config: { auth: managers, scope: 'users:read' },
        schema: { tags, summary: 'One user', description: 'A plain user may read only itself; any other id answers 404.', params: IdParams, response: { 200: User } },
      },
      async (request) => users.get(principalOf(request) as TenantBound, (request.params as Static<typeof IdParams>).id),
    );

    app.patch(
      '/users/:id',
      {
        config: { auth: managers, scope: 'users:write' },
        schema: {
          tags,
          summary: 'Change a user (account key, admin, or application key with users:write)',
          description: 'A new password ends every session of that user.',
          params: IdParams,
          body: UpdateUserBody,
          response: { 200: User },
        },
      },
      async (request) =>
        users.update(principalOf(request) as TenantBound, (request.params as Static<typeof IdParams>).id, request.body as Static<typeof UpdateUserBody>, {
          ip: request.ip,
        }),
    );

    app.delete(
      '/users/:id',
      {
        config: { auth: managers, scope: 'users:write' },
        schema: {
          tags,
          summary: 'Delete a user',
          description: 'Ends every session of the user; its access tokens stop working.',
          params: IdParams,
          response: { 204: { type: 'null' } },
        },
      },
      async (request, reply) => {
        await users.delete(principalOf(request) as TenantBound, (request.params as Static<typeof IdParams>).id, { ip: request.ip });
        return reply.code(204).send();
      },
    );

    app.get(
      '/audit',
      {
        config: { auth: ['account_key'] },
        schema: {
          tags: ['audit'],
          summary: 'Security events of the tenant and environment, newest first (account key)',
          description: 'Logins (succeeded, failed, throttled), users created, changed and deleted, password changes and resets, refresh token reuse, keys created and revoked.',
          querystring: ListQuery,
          response: { 200: Page(AuditEvent) },
        },
      },
      async (request) => {
        const principal = principalOf(request) as TenantBound;
        const query = request.query as Static<typeof ListQuery>;
        return audit.list(principal.environment, principal.tenantId, query.limit, decodeCursor(query.cursor));
      },
    );
  };
}
