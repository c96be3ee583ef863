import { decodeCursor, ListQuery, Page } from '../../../core/pagination.ts';
import { tenantPrincipalOf } from '../../../gateway/auth.ts';
import { type Route, route } from '../../../gateway/routes.ts';
import type { AuditLog } from '../domain/audit.ts';
import type { UsersService } from '../domain/users.service.ts';
import { AuditEvent, CreateUserBody, IdParams, UpdateMeBody, UpdateUserBody, User } from './identity.schemas.ts';
import { userPrincipalOf } from './principals.ts';

const MANAGERS = ['account_key', 'user', 'application_key'] as const;
const tags = ['users'];

export function usersRoutes(users: UsersService, audit: AuditLog): Route[] {
  return [
    route({
      method: 'GET',
      url: '/users/me',
      auth: ['user'],
      schema: { tags, summary: 'The calling user (user token)', response: { 200: User } },
      handler: async (request) => users.me(userPrincipalOf(request)),
    }),

    route({
      method: 'PATCH',
      url: '/users/me',
      auth: ['user'],
      // 401: wrong current_password; 429/503: the login throttle guards it (503 when its counters cannot answer).
      errors: [401, 409, 429, 503],
      schema: {
        tags,
        summary: 'Change your name, email or password (user token)',
        description: 'Changing the email or password needs `current_password`. A new password ends every other session of the user.',
        body: UpdateMeBody,
        response: { 200: User },
      },
      handler: async (request) => users.updateMe(userPrincipalOf(request), request.body, { ip: request.ip }),
    }),

    route({
      method: 'GET',
      url: '/users',
      auth: [...MANAGERS],
      scope: 'users:read',
      schema: { tags, summary: 'List users, newest first (account key, admin, or application key with users:read)', querystring: ListQuery, response: { 200: Page(User) } },
      handler: async (request) => users.list(tenantPrincipalOf(request), request.query.limit, decodeCursor(request.query.cursor)),
    }),

    route({
      method: 'POST',
      url: '/users',
      auth: [...MANAGERS],
      scope: 'users:write',
      errors: [409],
      schema: { tags, summary: 'Create a user (account key, admin, or application key with users:write)', body: CreateUserBody, response: { 201: User } },
      handler: async (request, reply) => reply.code(201).send(await users.create(tenantPrincipalOf(request), request.body, { ip: request.ip })),
    }),

    route({
      method: 'GET',
      url: '/users/:id',
      auth: [...MANAGERS],
      scope: 'users:read',
      errors: [404],
      schema: { tags, summary: 'One user', description: 'A plain user may read only itself; any other id answers 404.', params: IdParams, response: { 200: User } },
      handler: async (request) => users.get(tenantPrincipalOf(request), request.params.id),
    }),

    route({
      method: 'PATCH',
      url: '/users/:id',
      auth: [...MANAGERS],
      scope: 'users:write',
      errors: [404, 409],
      schema: {
        tags,
        summary: 'Change a user (account key, admin, or application key with users:write)',
        description: 'A new password ends every session of that user.',
        params: IdParams,
        body: UpdateUserBody,
        response: { 200: User },
      },
      handler: async (request) => users.update(tenantPrincipalOf(request), request.params.id, request.body, { ip: request.ip }),
    }),

    route({
      method: 'DELETE',
      url: '/users/:id',
      auth: [...MANAGERS],
      scope: 'users:write',
      errors: [404],
      schema: {
        tags,
        summary: 'Delete a user',
        description: 'Ends every session of the user; its access tokens stop working.',
        params: IdParams,
        response: { 204: { type: 'null' } },
      },
      handler: async (request, reply) => {
        await users.delete(tenantPrincipalOf(request), request.params.id, { ip: request.ip });
        return reply.code(204).send();
      },
    }),

    route({
      method: 'GET',
      url: '/audit',
      auth: ['account_key'],
      schema: {
        tags: ['audit'],
        summary: 'Security events of the tenant and environment, newest first (account key)',
        description: 'Logins (succeeded, failed, throttled), users created, changed and deleted, password changes and resets, refresh token reuse, keys created and revoked.',
        querystring: ListQuery,
        response: { 200: Page(AuditEvent) },
      },
      handler: async (request) => {
        const principal = tenantPrincipalOf(request);
        return audit.list(principal.environment, principal.tenantId, request.query.limit, decodeCursor(request.query.cursor));
      },
    }),
  ];
}
