import { ENVIRONMENTS } from '../../../adapters/db/pg.ts';
import { decodeCursor, ListQuery, Page } from '../../../core/pagination.ts';
import { type Route, route } from '../../../gateway/routes.ts';
import type { ApiKeysService } from '../domain/api-keys.service.ts';
import type { TokenService } from '../domain/tokens.service.ts';
import { CreatedKey, CreateKeyBody, IdParams, Jwks, KeyInfo, RotateSigningKeysBody, SigningKeyList } from './identity.schemas.ts';
import { accountPrincipalOf } from './principals.ts';

export function keysRoutes(keys: ApiKeysService): Route[] {
  const tags = ['keys'];
  return [
    route({
      method: 'POST',
      url: '/keys',
      auth: ['account_key'],
      schema: {
        tags,
        summary: 'Create an account or application key (account key)',
        description: 'The key belongs to the caller\'s environment. Its secret is in this answer only. Scopes (application keys): ' +
          'files:read, files:write, users:read, users:write, exports:read, exports:write, notifications:read.',
        body: CreateKeyBody,
        response: { 201: CreatedKey },
      },
      handler: async (request, reply) => reply.code(201).send(await keys.create(accountPrincipalOf(request), request.body, { ip: request.ip })),
    }),

    route({
      method: 'GET',
      url: '/keys',
      auth: ['account_key'],
      schema: { tags, summary: 'List live keys, newest first, never their secrets (account key)', querystring: ListQuery, response: { 200: Page(KeyInfo) } },
      handler: async (request) => keys.list(accountPrincipalOf(request), request.query.limit, decodeCursor(request.query.cursor)),
    }),

    route({
      method: 'DELETE',
      url: '/keys/:id',
      auth: ['account_key'],
      errors: [404],
      schema: { tags, summary: 'Revoke a key: it answers 401 from then on (account key)', params: IdParams, response: { 204: { type: 'null' } } },
      handler: async (request, reply) => {
        await keys.revoke(accountPrincipalOf(request), request.params.id, { ip: request.ip });
        return reply.code(204).send();
      },
    }),
  ];
}

/** At the root, outside /v1: where JWT libraries look for keys. */
export function jwksRoutes(tokens: TokenService): Route[] {
  return [
    route({
      method: 'GET',
      url: '/.well-known/jwks.json',
      at: 'root',
      schema: {
        tags: ['auth'],
        summary: 'Public keys that verify user access tokens (JWKS)',
        description: 'Ed25519 keys (`OKP`, `EdDSA`). After a rotation the previous key stays here until the tokens it signed have expired.',
        response: { 200: Jwks },
      },
      handler: async (_request, reply) => {
        // Short: a client that meets an unknown kid after a rotation should not wait long.
        reply.header('cache-control', 'public, max-age=60');
        return tokens.jwks();
      },
    }),
  ];
}

/** The JWT signing keys, for the platform operator: what is published, and rotation. */
export function signingKeysRoutes(tokens: TokenService): Route[] {
  const tags = ['signing keys'];
  return [
    route({
      method: 'GET',
      url: '/signing-keys',
      auth: ['operator'],
      schema: {
        tags,
        summary: 'JWT signing keys that still verify tokens, per environment (operator token)',
        description: 'Never the private keys. One `active` key per environment signs new access tokens; `retired` ones verify the tokens they signed until `verifies_until`.',
        response: { 200: SigningKeyList },
      },
      handler: async () => ({ data: await tokens.listKeys(), next_cursor: null }),
    }),

    route({
      method: 'POST',
      url: '/signing-keys/rotate',
      auth: ['operator'],
      // A request without any body counts as `{}` (both environments); `null` stays invalid.
      absentBody: {},
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
      handler: async (request, reply) => {
        const { environment } = request.body;
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
    }),
  ];
}
