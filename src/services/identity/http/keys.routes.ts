import type { Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { ENVIRONMENTS } from '../../../adapters/db/pg.ts';
import { decodeCursor, ListQuery, Page } from '../../../core/pagination.ts';
import type { Principal } from '../../../core/principal.ts';
import { principalOf } from '../../../gateway/auth.ts';
import type { ApiKeysService } from '../domain/api-keys.service.ts';
import type { TokenService } from '../domain/tokens.service.ts';
import { CreatedKey, CreateKeyBody, IdParams, Jwks, KeyInfo, RotateSigningKeysBody, SigningKeyList } from './identity.schemas.ts';

type AccountPrincipal = Extract<Principal, { kind: 'account_key' }>;
const tags = ['keys'];

export function keysRoutes(keys: ApiKeysService) {
  return async (app: FastifyInstance) => {
    app.post(
      '/keys',
      {
        config: { auth: ['account_key'] },
        schema: {
          tags,
          summary: 'Create an account or application key (account key)',
          description: 'The key belongs to the caller\'s environment. Its secret is in this answer only. Scopes (application keys): ' +
            'files:read, files:write, users:read, users:write, exports:read, exports:write, notifications:read.',
          body: CreateKeyBody,
          response: { 201: CreatedKey },
        },
      },
      async (request, reply) => {
        const created = await keys.create(principalOf(request) as AccountPrincipal, request.body as Static<typeof CreateKeyBody>, { ip: request.ip });
        return reply.code(201).send(created);
      },
    );

    app.get(
      '/keys',
      {
        config: { auth: ['account_key'] },
        schema: { tags, summary: 'List live keys, newest first, never their secrets (account key)', querystring: ListQuery, response: { 200: Page(KeyInfo) } },
      },
      async (request) => {
        const query = request.query as Static<typeof ListQuery>;
        return keys.list(principalOf(request) as AccountPrincipal, query.limit, decodeCursor(query.cursor));
      },
    );

    app.delete(
      '/keys/:id',
      {
        config: { auth: ['account_key'] },
        schema: { tags, summary: 'Revoke a key: it answers 401 from then on (account key)', params: IdParams, response: { 204: { type: 'null' } } },
      },
      async (request, reply) => {
        await keys.revoke(principalOf(request) as AccountPrincipal, (request.params as Static<typeof IdParams>).id, { ip: request.ip });
        return reply.code(204).send();
      },
    );
  };
}

/** Registered at the root, outside /v1: where JWT libraries look for keys. */
export function jwksRoutes(tokens: TokenService) {
  return async (app: FastifyInstance) => {
    app.get(
      '/.well-known/jwks.json',
      {
        schema: {
          tags: ['auth'],
          summary: 'Public keys that verify user access tokens (JWKS)',
          description: 'Ed25519 keys (`OKP`, `EdDSA`). After a rotation the previous key stays here until the tokens it signed have expired.',
          response: { 200: Jwks },
        },
      },
      async (_request, reply) => {
        // Short: a client that meets an unknown kid after a rotation should not wait long.
        reply.header('cache-control', 'public, max-age=60');
        return tokens.jwks();
      },
    );
  };
}

/** The JWT signing keys, for the platform operator: what is published, and rotation. */
export function signingKeysRoutes(tokens: TokenService) {
  return async (app: FastifyInstance) => {
    const tags = ['signing keys'];
    app.get(
      '/signing-keys',
      {
        config: { auth: ['operator'] },
        schema: {
          tags,
          summary: 'JWT signing keys that still verify tokens, per environment (operator token)',
          description: 'Never the private keys. One `active` key per environment signs new access tokens; `retired` ones verify the tokens they signed until `verifies_until`.',
          response: { 200: SigningKeyList },
        },
      },
      async () => ({ data: await tokens.listKeys(), next_cursor: null }),
    );

    app.post(
      '/signing-keys/rotate',
      {
        config: { auth: ['operator'] },
        schema: {
          tags,
          summary: 'Rotate the JWT signing key of one or both environments (operator token)',
          description:
            'A new key signs every access token from now on. Tokens signed by the previous key keep working until they expire (15 minutes), ' +
            'and the previous key stays at /.well-known/jwks.json until then. Other processes of the installation follow within a minute. ' +
            'Send `{}` (or no body) to rotate both environments. Answers the new keys.',
          body: RotateSigningKeysBody,
          response: { 201: SigningKeyList },
        },
        // A request without any body counts as `{}` (both environments); `null` stays invalid.
        preValidation: async (request) => {
          if (request.body === undefined) request.body = {};
        },
      },
      async (request, reply) => {
        const { environment } = request.body as Static<typeof RotateSigningKeysBody>;
        const rotated = environment ? [environment] : [...ENVIRONMENTS];
        const kids = new Set<string>();
        for (const env of rotated) {
          const kid = await tokens.rotate(env);
          kids.add(kid);
          request.log.info({ environment: env, kid }, 'JWT signing key rotated');
        }
        const keys = (await tokens.listKeys()).filter((key) => kids.has(key.kid));
        return reply.code(201).send({ data: keys, next_cursor: null });
      },
    );
  };
}
