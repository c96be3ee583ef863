import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { AppError, Errors } from '../core/errors.ts';
import type { Principal, TenantPrincipal } from '../core/principal.ts';
import type { CredentialVerifier } from '../core/service-ports.ts';
import { logWithPrincipal } from './log-context.ts';

/**
 * Authentication at the gateway: services receive `request.principal`, already verified.
 *
 * A route says who may call it in its config: `config: { auth: ['account_key', 'user'], scope: 'files:read' }`.
 * Credentials: HTTP Basic with the key as user name and an empty password, or a Bearer key,
 * JWT or operator token. Missing or bad credentials answer 401 with WWW-Authenticate;
 * valid ones of the wrong kind (or an application key without the scope) answer 403.
 */
export type PrincipalKind = Principal['kind'];

export interface RouteAuth {
  auth?: PrincipalKind[];
  /** Scope an application key must carry; account keys and users need none. */
  scope?: string;
  /** Application keys may call this route with no scope at all (register, login, ...). */
  publicForApplications?: boolean;
  /**
   * A request without an Authorization header passes with no principal: the handler then
   * asks for another proof (a signed link's token). Credentials that are sent are checked as usual.
   */
  credentialsOptional?: boolean;
}

export type { CredentialVerifier } from '../core/service-ports.ts';

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | null;
  }
  interface FastifyContextConfig extends RouteAuth {}
}

export const WWW_AUTHENTICATE = 'Basic realm="bantu", Bearer realm="bantu"';

export function credentialOf(header: string | undefined): string | null {
  if (!header) return null;
  const [scheme, value] = header.split(' ', 2);
  if (!scheme || !value) return null;
  if (scheme.toLowerCase() === 'bearer') return value.trim() || null;
  if (scheme.toLowerCase() === 'basic') {
    const decoded = Buffer.from(value.trim(), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const user = colon >= 0 ? decoded.slice(0, colon) : decoded;
    return user || null;
  }
  return null;
}

export function operatorVerifier(operatorToken: string): CredentialVerifier {
  const expected = createHash('sha256').update(operatorToken).digest();
  return {
    async verify(credential) {
      const given = createHash('sha256').update(credential).digest();
      return timingSafeEqual(given, expected) ? { kind: 'operator' } : null;
    },
  };
}

export function unauthorized(detail = 'Missing or invalid credentials'): AppError {
  return new AppError(Errors.unauthorized, detail, { headers: { 'WWW-Authenticate': WWW_AUTHENTICATE } });
}

/**
 * Tries each verifier in turn; the first that recognises the credential wins.
 * The check is attached only to routes that declare `auth`, when they are registered:
 * open routes (health, docs) pay nothing for it.
 */
export function registerAuthentication(app: FastifyInstance, verifiers: CredentialVerifier[]): void {
  app.decorateRequest('principal', null);
  app.addHook('onRoute', (route) => {
    const rule = route.config as RouteAuth | undefined;
    if (!rule?.auth) return;
    const authenticate = authenticator(verifiers, { ...rule, auth: rule.auth });
    const existing = route.preHandler === undefined ? [] : Array.isArray(route.preHandler) ? route.preHandler : [route.preHandler];
    route.preHandler = [authenticate, ...existing];
    if (route.schema && !route.schema.security) {
      // Document the route's credentials in the OpenAPI document.
      const schema = route.schema as Record<string, unknown>;
      schema.security = [{ basicKey: [] }, { bearer: [] }];
      // Which kinds of credential the route accepts, for readers and generated clients.
      schema['x-bantu-auth'] = rule.auth;
      if (rule.scope) schema['x-bantu-scope'] = rule.scope;
    }
  });
}

function authenticator(verifiers: CredentialVerifier[], rule: RouteAuth & { auth: PrincipalKind[] }) {
  return async (request: FastifyRequest) => {
    if (rule.credentialsOptional && request.headers.authorization === undefined) return;
    const principal = await verifyCredential(verifiers, request.headers.authorization);
    enforceRule(principal, rule);
    request.principal = principal;
    logWithPrincipal(request, principal);
  };
}

/** The principal behind an Authorization header; 401 when there is none or no verifier knows it. */
export async function verifyCredential(verifiers: CredentialVerifier[], authorization: string | undefined): Promise<Principal> {
  const credential = credentialOf(authorization);
  if (!credential) throw unauthorized();
  for (const verifier of verifiers) {
    const principal = await verifier.verify(credential);
    if (principal) return principal;
  }
  throw unauthorized();
}

/** A route's rule applied to a verified principal: 403 when its kind or scope does not fit. */
export function enforceRule(principal: Principal, rule: RouteAuth & { auth: PrincipalKind[] }): void {
  if (!rule.auth.includes(principal.kind)) throw new AppError(Errors.forbidden, 'These credentials may not call this route');
  if (principal.kind === 'application_key' && !rule.publicForApplications) {
    if (!rule.scope || !principal.scopes.includes(rule.scope)) {
      throw new AppError(Errors.forbidden, rule.scope ? `This application key lacks the scope ${rule.scope}` : 'Application keys may not call this route');
    }
  }
}

/** The principal of a route that declared `auth`: present by construction. */
export function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw unauthorized();
  return request.principal;
}

/** The principal of a route about a tenant's data: the operator token owns none. */
export function tenantPrincipalOf(request: FastifyRequest): TenantPrincipal {
  const principal = principalOf(request);
  if (principal.kind === 'operator') throw new AppError(Errors.forbidden, 'The operator token does not own tenant data');
  return principal;
}
