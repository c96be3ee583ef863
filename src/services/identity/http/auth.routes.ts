import type { Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { principalOf } from '../../../gateway/auth.ts';
import type { AuthService } from '../domain/auth.service.ts';
import type { KeyPrincipal, UserPrincipal } from '../domain/users.ts';
import { Accepted, AuthResult, ForgotBody, LoginBody, RefreshBody, RegisterBody, ResetBody } from './identity.schemas.ts';

/** Register, login, refresh, logout, password recovery. An application key alone may call these. */
const byKeys = { auth: ['application_key', 'account_key'] as ('application_key' | 'account_key')[], publicForApplications: true };
const tags = ['auth'];

export function authRoutes(auth: AuthService) {
  return async (app: FastifyInstance) => {
    app.post(
      '/auth/register',
      {
        config: byKeys,
        schema: {
          tags,
          summary: 'Register a user (application or account key)',
          description: 'Creates a user with role `user` in the key\'s tenant and environment and opens a session. Same email (any case) in the same tenant and environment: 409 `email_taken`.',
          body: RegisterBody,
          response: { 201: AuthResult },
        },
      },
      async (request, reply) => {
        const body = request.body as Static<typeof RegisterBody>;
        return reply.code(201).send(await auth.register(principalOf(request) as KeyPrincipal, body, { ip: request.ip }));
      },
    );

    app.post(
      '/auth/login',
      {
        config: byKeys,
        schema: {
          tags,
          summary: 'Log in with email and password',
          description:
            'Wrong password and unknown email answer the same 401 `invalid_credentials`. Repeated failures per account or per client address answer 429 `rate_limited` with `Retry-After`.',
          body: LoginBody,
          response: { 200: AuthResult },
        },
      },
      async (request) => auth.login(principalOf(request) as KeyPrincipal, request.body as Static<typeof LoginBody>, { ip: request.ip }),
    );

    app.post(
      '/auth/refresh',
      {
        config: byKeys,
        schema: {
          tags,
          summary: 'Trade a refresh token for a new token pair',
          description:
            'The presented refresh token is spent. Presenting a spent token again revokes its whole session (every token descending from the same login). Unknown, spent or expired: 400 `invalid_token`.',
          body: RefreshBody,
          response: { 200: AuthResult },
        },
      },
      async (request) => auth.refresh(principalOf(request) as KeyPrincipal, request.body as Static<typeof RefreshBody>, { ip: request.ip }),
    );

    app.post(
      '/auth/logout',
      {
        config: { auth: ['user'] },
        schema: { tags, summary: 'End the session of a refresh token (user token)', body: RefreshBody, response: { 204: { type: 'null' } } },
      },
      async (request, reply) => {
        await auth.logout(principalOf(request) as UserPrincipal, request.body as Static<typeof RefreshBody>);
        return reply.code(204).send();
      },
    );

    app.post(
      '/auth/password/forgot',
      {
        config: byKeys,
        schema: {
          tags,
          summary: 'Ask for a password reset mail',
          description: 'Always 202 with the same body. A known address gets a mail with a single-use token valid for one hour.',
          body: ForgotBody,
          response: { 202: Accepted },
        },
      },
      async (request, reply) => {
        await auth.forgot(principalOf(request) as KeyPrincipal, request.body as Static<typeof ForgotBody>, { ip: request.ip });
        return reply.code(202).send({ status: 'accepted', detail: 'If this address belongs to an account, a mail with reset instructions is on its way.' });
      },
    );

    app.post(
      '/auth/password/reset',
      {
        config: byKeys,
        schema: {
          tags,
          summary: 'Set a new password with a mailed reset token',
          description: 'Ends every session of the user. A used or expired token: 400 `invalid_token`.',
          body: ResetBody,
          response: { 204: { type: 'null' } },
        },
      },
      async (request, reply) => {
        await auth.reset(principalOf(request) as KeyPrincipal, request.body as Static<typeof ResetBody>, { ip: request.ip });
        return reply.code(204).send();
      },
    );
  };
}
