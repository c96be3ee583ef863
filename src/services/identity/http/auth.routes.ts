import { type Route, route } from '../../../gateway/routes.ts';
import type { AuthService } from '../domain/auth.service.ts';
import { Accepted, AuthResult, ForgotBody, LoginBody, RefreshBody, RegisterBody, ResetBody } from './identity.schemas.ts';
import { keyPrincipalOf, userPrincipalOf } from './principals.ts';

/** Register, login, refresh, logout, password recovery. An application key alone may call these. */
const KEYS = ['application_key', 'account_key'] as const;
const tags = ['auth'];

export function authRoutes(auth: AuthService): Route[] {
  return [
    route({
      method: 'POST',
      url: '/auth/register',
      auth: [...KEYS],
      publicForApplications: true,
      errors: [409],
      schema: {
        tags,
        summary: 'Register a user (application or account key)',
        description: 'Creates a user with role `user` in the key\'s tenant and environment and opens a session. Same email (any case) in the same tenant and environment: 409 `email_taken`.',
        body: RegisterBody,
        response: { 201: AuthResult },
      },
      handler: async (request, reply) => reply.code(201).send(await auth.register(keyPrincipalOf(request), request.body, { ip: request.ip })),
    }),

    route({
      method: 'POST',
      url: '/auth/login',
      auth: [...KEYS],
      publicForApplications: true,
      // 503: the login throttle's counters (Redis) cannot answer; logins wait rather than go unthrottled.
      errors: [401, 429, 503],
      schema: {
        tags,
        summary: 'Log in with email and password',
        description:
          'Wrong password and unknown email answer the same 401 `invalid_credentials`. Repeated failures per account or per client address answer 429 `rate_limited` with `Retry-After`.',
        body: LoginBody,
        response: { 200: AuthResult },
      },
      handler: async (request) => auth.login(keyPrincipalOf(request), request.body, { ip: request.ip }),
    }),

    route({
      method: 'POST',
      url: '/auth/refresh',
      auth: [...KEYS],
      publicForApplications: true,
      errors: [400],
      schema: {
        tags,
        summary: 'Trade a refresh token for a new token pair',
        description:
          'The presented refresh token is spent. Presenting a spent token again revokes its whole session (every token descending from the same login). Unknown, spent or expired: 400 `invalid_token`.',
        body: RefreshBody,
        response: { 200: AuthResult },
      },
      handler: async (request) => auth.refresh(keyPrincipalOf(request), request.body, { ip: request.ip }),
    }),

    route({
      method: 'POST',
      url: '/auth/logout',
      auth: ['user'],
      schema: { tags, summary: 'End the session of a refresh token (user token)', body: RefreshBody, response: { 204: { type: 'null' } } },
      handler: async (request, reply) => {
        await auth.logout(userPrincipalOf(request), request.body);
        return reply.code(204).send();
      },
    }),

    route({
      method: 'POST',
      url: '/auth/password/forgot',
      auth: [...KEYS],
      publicForApplications: true,
      // Always 202, even when the rate-limit counters are down: the answer tells no addresses apart.
      schema: {
        tags,
        summary: 'Ask for a password reset mail',
        description: 'Always 202 with the same body. A known address gets a mail with a single-use token valid for one hour.',
        body: ForgotBody,
        response: { 202: Accepted },
      },
      handler: async (request, reply) => {
        await auth.forgot(keyPrincipalOf(request), request.body, { ip: request.ip });
        return reply.code(202).send({ status: 'accepted', detail: 'If this address belongs to an account, a mail with reset instructions is on its way.' });
      },
    }),

    route({
      method: 'POST',
      url: '/auth/password/reset',
      auth: [...KEYS],
      publicForApplications: true,
      errors: [400],
      schema: {
        tags,
        summary: 'Set a new password with a mailed reset token',
        description: 'Ends every session of the user. A used or expired token: 400 `invalid_token`.',
        body: ResetBody,
        response: { 204: { type: 'null' } },
      },
      handler: async (request, reply) => {
        await auth.reset(keyPrincipalOf(request), request.body, { ip: request.ip });
        return reply.code(204).send();
      },
    }),
  ];
}
